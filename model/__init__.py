"""SkillNet + Wukong mini model, trainer and the offline 5-modality benchmark data (issue 6)."""
