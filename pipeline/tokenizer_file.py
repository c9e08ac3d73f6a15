"""A data (or run) directory's tokenizer, of either kind, behind one interface.

    sentencepiece   DIR/tokenizer.model                            trained by pipeline.prepare, or given
                                                                   (pipeline.tokenizer.Tokenizer)
    huggingface     DIR/tokenizer.json + DIR/tokenizer_config.json  given with --tokenizer
                                                                   (pipeline.hf_tokenizer.HFTokenizer)

Both objects have vocab_size, eos_id, bos_id, encode, encode_document, decode and model_proto; the manifest's
``tokenizer.kind`` says which one a directory holds (manifests without it are SentencePiece), and
``tokenizer.path`` names the file. Training copies the files into the run directory, and export and generation
open them from there (open_tokenizer_path).
"""
from __future__ import annotations

import os

from pipeline.layout import HF_CONFIG_NAME, HF_TOKENIZER_NAME, TOKENIZER_NAME

SENTENCEPIECE, HUGGINGFACE = "sentencepiece", "huggingface"


def kind_of(tokenizer) -> str:
    """SENTENCEPIECE or HUGGINGFACE for a tokenizer object."""
    from pipeline.hf_tokenizer import HFTokenizer

    return HUGGINGFACE if isinstance(tokenizer, HFTokenizer) else SENTENCEPIECE


def file_names(kind: str) -> tuple[str, ...]:
    """The files a directory holds for a tokenizer of ``kind``, the tokenizer itself first."""
    if kind == SENTENCEPIECE:
        return (TOKENIZER_NAME,)
    if kind == HUGGINGFACE:
        return (HF_TOKENIZER_NAME, HF_CONFIG_NAME)
    raise ValueError(f"unknown tokenizer kind {kind!r}: expected {SENTENCEPIECE!r} or {HUGGINGFACE!r}")


def file_contents(tokenizer) -> dict[str, bytes]:
    """{file name: bytes} of the files that hold ``tokenizer`` in a directory."""
    if kind_of(tokenizer) == HUGGINGFACE:
        return {HF_TOKENIZER_NAME: tokenizer.model_proto, HF_CONFIG_NAME: tokenizer.config_json}
    return {TOKENIZER_NAME: tokenizer.model_proto}


def open_tokenizer(kind: str, model: bytes, config: bytes | None = None, name: str | None = None):
    """A tokenizer object from its files' bytes (as the stages pass them around in the tokenizer info)."""
    if kind == HUGGINGFACE:
        from pipeline.hf_tokenizer import HFTokenizer

        if config is None:
            raise ValueError(f"{name or HF_TOKENIZER_NAME}: a Hugging Face tokenizer needs its tokenizer_config.json")
        return HFTokenizer(model, config, name or HF_TOKENIZER_NAME)
    file_names(kind)  # raises for an unknown kind, naming the known ones
    from pipeline.tokenizer import Tokenizer

    return Tokenizer.from_bytes(model, name or TOKENIZER_NAME)


def open_tokenizer_path(path: str):
    """The tokenizer in a tokenizer.model or tokenizer.json file (the latter with its tokenizer_config.json)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"tokenizer {path} does not exist: pass the tokenizer.model or tokenizer.json of the "
                                "prepared data (training copies it into the run directory)")
    if path.endswith(".json"):
        from pipeline.hf_tokenizer import HFTokenizer

        return HFTokenizer.from_file(path)
    from pipeline.tokenizer import Tokenizer

    return Tokenizer(path)


def find_tokenizer(directory: str) -> str | None:
    """The tokenizer file of a data or run directory (tokenizer.model, else tokenizer.json), or None."""
    for name in (TOKENIZER_NAME, HF_TOKENIZER_NAME):
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            return path
    return None
