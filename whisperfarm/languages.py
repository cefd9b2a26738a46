"""Which spoken languages a model takes, checked before any work starts.

An English-only model (its name ends ``.en``) takes English only; a multilingual one the
language codes faster-whisper's tokenizer knows (``faster_whisper.tokenizer``). A language
may also be given by its English name (``--language German``), as the whisper CLIs
accept: it is stored and sent as its code.
"""

from __future__ import annotations

from pathlib import Path

from whisperfarm.errors import UsageError

NAMES = {
    "af": "Afrikaans", "am": "Amharic", "ar": "Arabic", "as": "Assamese",
    "az": "Azerbaijani", "ba": "Bashkir", "be": "Belarusian", "bg": "Bulgarian",
    "bn": "Bengali", "bo": "Tibetan", "br": "Breton", "bs": "Bosnian", "ca": "Catalan",
    "cs": "Czech", "cy": "Welsh", "da": "Danish", "de": "German", "el": "Greek",
    "en": "English", "es": "Spanish", "et": "Estonian", "eu": "Basque", "fa": "Persian",
    "fi": "Finnish", "fo": "Faroese", "fr": "French", "gl": "Galician", "gu": "Gujarati",
    "ha": "Hausa", "haw": "Hawaiian", "he": "Hebrew", "hi": "Hindi", "hr": "Croatian",
    "ht": "Haitian Creole", "hu": "Hungarian", "hy": "Armenian", "id": "Indonesian",
    "is": "Icelandic", "it": "Italian", "ja": "Japanese", "jw": "Javanese",
    "ka": "Georgian", "kk": "Kazakh", "km": "Khmer", "kn": "Kannada", "ko": "Korean",
    "la": "Latin", "lb": "Luxembourgish", "ln": "Lingala", "lo": "Lao",
    "lt": "Lithuanian", "lv": "Latvian", "mg": "Malagasy", "mi": "Maori",
    "mk": "Macedonian", "ml": "Malayalam", "mn": "Mongolian", "mr": "Marathi",
    "ms": "Malay", "mt": "Maltese", "my": "Myanmar", "ne": "Nepali", "nl": "Dutch",
    "nn": "Nynorsk", "no": "Norwegian", "oc": "Occitan", "pa": "Punjabi", "pl": "Polish",
    "ps": "Pashto", "pt": "Portuguese", "ro": "Romanian", "ru": "Russian",
    "sa": "Sanskrit", "sd": "Sindhi", "si": "Sinhala", "sk": "Slovak", "sl": "Slovenian",
    "sn": "Shona", "so": "Somali", "sq": "Albanian", "sr": "Serbian", "su": "Sundanese",
    "sv": "Swedish", "sw": "Swahili", "ta": "Tamil", "te": "Telugu", "tg": "Tajik",
    "th": "Thai", "tk": "Turkmen", "tl": "Tagalog", "tr": "Turkish", "tt": "Tatar",
    "uk": "Ukrainian", "ur": "Urdu", "uz": "Uzbek", "vi": "Vietnamese", "yi": "Yiddish",
    "yo": "Yoruba", "yue": "Cantonese", "zh": "Chinese",
}  # fmt: skip
"""English names of the codes faster-whisper knows (tests check the two lists agree)."""

ALIASES = {
    "burmese": "my", "castilian": "es", "flemish": "nl", "haitian": "ht",
    "mandarin": "zh", "moldavian": "ro", "moldovan": "ro", "panjabi": "pa",
    "pushto": "ps", "sinhalese": "si", "valencian": "ca",
}  # fmt: skip
"""Other names people use for a language Whisper knows by another."""


def whisper_codes() -> tuple[str, ...]:
    """The language codes a multilingual Whisper model takes, as faster-whisper lists them."""
    # The list is private to faster-whisper's tokenizer, and has been since 0.10; there is
    # no public one (test_languages checks it is there on the lowest version allowed).
    from faster_whisper.tokenizer import _LANGUAGE_CODES

    return tuple(_LANGUAGE_CODES)


def english_only(model: str) -> bool:
    """An English-only model: ``tiny.en`` … ``medium.en``, or a directory so named."""
    return Path(model).name.endswith(".en")


def language_code(language: str | None, model: str) -> str | None:
    """The code ``language`` names (a code or an English name, any case) for ``model``;
    None stays None (English for an English-only model, else detected). Refuses, naming
    the valid codes, a language the model can't take."""
    if language is None:
        return None
    wanted = language.strip().lower()
    by_name = {name.lower(): code for code, name in NAMES.items()} | ALIASES
    code = wanted if wanted in NAMES else by_name.get(wanted)
    if english_only(model):
        if code == "en":
            return code
        raise UsageError(
            f"--language {language}: {model} is an English-only model; use --language en "
            "(or leave it out), or a multilingual model such as small or large-v3-turbo"
        )
    codes = whisper_codes()
    if code is None or code not in codes:
        raise UsageError(
            f"--language {language} is not a language Whisper knows: use one of "
            f"{', '.join(codes)} (or its English name, e.g. German), or leave it out to "
            "have it detected"
        )
    return code
