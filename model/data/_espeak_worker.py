"""Speaks Mandarin with the espeak-ng library bundled by espeakng-loader, through ctypes; run as a
fresh subprocess by speech.py (`python _espeak_worker.py REQUEST.json OUT`), importing only numpy.

Two sources of variation, both handled: (1) the breathy variants (f2, f3, ...) mix in noise from
espeak's random generator, which espeak_Initialize seeds with time(NULL), so every clip is spoken
right after espeak_ng_SetRandSeed and srand with a fixed seed; (2) espeak-ng keeps wave-generator
state from one utterance to the next (measured with espeakng-loader 0.2.4: the same word spoken
twice in one process differs in length by a few samples and in content from sample 64 on, whatever
the seeds; espeak_Initialize again does not reset it), while a fresh process that speaks the same
list in the same order gives identical bytes. So one build speaks all its clips in one new process.

Request JSON: {"library": path, "data_parent": dir holding espeak-ng-data, "mode": "phonemes" |
"speak", "items": [text, ...] | [{"text", "voice", "rate", "pitch"}, ...]}.
Output: phonemes -> JSON list of espeak phoneme strings; speak -> .npz (audio int16 concatenated,
lengths int64, sample_rate).
"""
import ctypes
import json
import sys

import numpy as np

AUDIO_OUTPUT_SYNCHRONOUS = 2     # espeak_AUDIO_OUTPUT: synthesise in the calling thread
INITIALIZE_DONT_EXIT = 0x8000    # return an error instead of exit() when the data is missing
CHARS_UTF8 = 1
POS_CHARACTER = 1
PARAM_RATE, PARAM_PITCH = 1, 3   # espeak_PARAMETER
EE_OK = 0
RAND_SEED = 1
libc = ctypes.CDLL(None)


def _load(library: str, data_parent: str):
    lib = ctypes.CDLL(library)
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
                                 ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
    lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
    lib.espeak_TextToPhonemes.restype = ctypes.c_char_p
    lib.espeak_TextToPhonemes.argtypes = [ctypes.POINTER(ctypes.c_char_p), ctypes.c_int, ctypes.c_int]
    rate = lib.espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS, 0, data_parent.encode(), INITIALIZE_DONT_EXIT)
    if rate <= 0:
        raise RuntimeError(f"espeak_Initialize failed ({rate}) with data under {data_parent}")
    return lib, rate


def _set_voice(lib, voice: str) -> None:
    err = lib.espeak_SetVoiceByName(voice.encode())
    if err != EE_OK:
        raise RuntimeError(f"espeak-ng has no voice {voice!r} (error {err})")


def phonemes(lib, texts):
    _set_voice(lib, "cmn")
    out = []
    for text in texts:
        buf = ctypes.create_string_buffer(text.encode("utf-8"))
        ptr = ctypes.c_char_p(ctypes.addressof(buf))
        parts = []
        while ptr.value:                       # one clause per call; ptr becomes NULL at the end
            ph = lib.espeak_TextToPhonemes(ctypes.byref(ptr), CHARS_UTF8, 0)
            parts.append(ph.decode("utf-8", "replace") if ph else "")
        out.append(" ".join(parts))
    return out


def speak(lib, items):
    chunks = []
    callback_type = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)

    def on_audio(wav, n, events):
        if n > 0:
            chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())   # the buffer is reused
        return 0                               # 0 = continue synthesis

    callback = callback_type(on_audio)          # kept alive until the end of this function
    lib.espeak_SetSynthCallback(callback)
    clips = []
    for item in items:
        _set_voice(lib, item["voice"])
        lib.espeak_SetParameter(PARAM_RATE, int(item["rate"]), 0)
        lib.espeak_SetParameter(PARAM_PITCH, int(item["pitch"]), 0)
        text = item["text"].encode("utf-8")
        # breathy variants (f2, f3, ...) mix in noise from espeak's own generator, which
        # espeak_Initialize seeds with time(NULL); libc rand() is used too. Fixed seeds per clip.
        lib.espeak_ng_SetRandSeed(RAND_SEED)
        libc.srand(RAND_SEED)
        chunks.clear()
        err = lib.espeak_Synth(text, len(text) + 1, 0, POS_CHARACTER, 0, CHARS_UTF8, None, None)
        if err != EE_OK:
            raise RuntimeError(f"espeak_Synth failed ({err}) on {item['text']!r}")
        lib.espeak_Synchronize()
        clips.append(np.concatenate(chunks) if chunks else np.zeros(0, np.int16))
    return clips


def main(request_path: str, out_path: str) -> None:
    with open(request_path, encoding="utf-8") as f:
        req = json.load(f)
    lib, rate = _load(req["library"], req["data_parent"])
    if req["mode"] == "phonemes":
        with open(out_path, "w", encoding="utf-8") as f:
            json.dump(phonemes(lib, req["items"]), f, ensure_ascii=False)
    elif req["mode"] == "speak":
        clips = speak(lib, req["items"])
        audio = np.concatenate(clips) if clips else np.zeros(0, np.int16)
        with open(out_path, "wb") as f:
            np.savez(f, audio=audio.astype(np.int16), lengths=np.array([len(c) for c in clips], np.int64),
                     sample_rate=np.array(rate))
    else:
        raise ValueError(f"mode: expected 'phonemes' or 'speak', got {req['mode']!r}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
