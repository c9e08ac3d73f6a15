"""Hugging Face tokenizers (a ``tokenizer.json``) as the tokenizer of a prepared data directory.

Byte-level BPE (GPT-2, GPT-NeoX, Llama 3) and SentencePiece-derived ones (Llama 2, Mistral) alike: the
``tokenizers`` library runs the file as it is. A data directory holding one has two files, the pair that
Hugging Face itself loads::

    DIR/tokenizer.json          the tokenizer, byte for byte as given
    DIR/tokenizer_config.json   written by us: its eos_token (the document separator), and the special-token
                                names of the given tokenizer_config.json when there was one

A document's sequence is ``ids(text) + [eos_id]``, as with our SentencePiece models: no BOS and nothing else
that the tokenizer's post-processor would add (``add_special_tokens=False``), so every source of a blend has
the same format. Text that spells a special token ("<|endoftext|>" in a web page) is encoded as plain text,
never as the special token itself (``encode_special_tokens``); truncation or padding set in the file are
switched off, so no document is ever cut.

The EOS token, in this order: ``--eos-token``, else the ``eos_token`` of the tokenizer_config.json next to the
tokenizer.json. A tokenizer without one is refused: nothing in tokenizer.json alone says which special token
ends a document.

Where --tokenizer can point (resolve_hf_tokenizer):
    a tokenizer.json file (local or gs://), its tokenizer_config.json read from the same folder when present;
    a local folder holding tokenizer.json (a Hugging Face model or tokenizer directory);
    a Hub name such as ``gpt2`` or ``EleutherAI/gpt-neox-20b``, downloaded with huggingface_hub when the machine
    can reach the Hub.
"""
from __future__ import annotations

import json
import os

import numpy as np

from pipeline.layout import HF_CONFIG_NAME, HF_TOKENIZER_NAME

# Special-token names of a tokenizer_config.json that a data directory's own config keeps.
_KEPT_TOKENS = ("bos_token", "unk_token", "pad_token")


def _token_name(value) -> str | None:
    """A tokenizer_config.json token entry: a string, or a dict with "content" (an AddedToken); else None."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    return None


def data_config(source_config: dict | None, eos_token: str) -> bytes:
    """The tokenizer_config.json a data directory holds: the EOS token, and the given config's other special
    token names; the generic fast class, so transformers loads tokenizer.json verbatim (4.x and 5.x)."""
    out = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": eos_token, "split_special_tokens": True,
           "clean_up_tokenization_spaces": False}
    for key in _KEPT_TOKENS:
        name = _token_name((source_config or {}).get(key))
        if name is not None:
            out[key] = name
    return (json.dumps(out, indent=2, sort_keys=True) + "\n").encode("utf-8")


class HFTokenizer:
    """A tokenizer.json plus its EOS token: ids for text, a document's sequence (ids + EOS), text for ids.

    The same interface as pipeline.tokenizer.Tokenizer (vocab_size, eos_id, bos_id, encode, encode_document,
    decode, model_proto), so the stages and the trainer do not care which kind a data directory holds.
    """

    def __init__(self, tokenizer_json: bytes, config_json: bytes, name: str = HF_TOKENIZER_NAME):
        from tokenizers import Tokenizer as Backend

        self.model_path = name
        self._json, self._config_json = bytes(tokenizer_json), bytes(config_json)
        try:
            backend = Backend.from_str(self._json.decode("utf-8"))
        except Exception as e:  # tokenizers raises a plain Exception for a malformed file, UnicodeDecodeError too
            raise ValueError(f"{name} is not a Hugging Face tokenizer.json ({e}): pass the tokenizer.json of a "
                             "Hugging Face tokenizer, or a folder holding one") from e
        backend.no_truncation()
        backend.no_padding()
        backend.encode_special_tokens = True  # "<|endoftext|>" inside a document is text, not the EOS token
        self._backend = backend
        try:
            config = json.loads(self._config_json.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            raise ValueError(f"the tokenizer_config.json of {name} is not JSON ({e})") from e
        vocab = backend.get_vocab(with_added_tokens=True)
        # Ids may have gaps (added tokens placed past the model's range): the vocabulary is every id up to the
        # largest, which is what the embedding table must hold.
        self.vocab_size: int = max(vocab.values()) + 1 if vocab else 0
        eos = _token_name(config.get("eos_token"))
        if eos is None:
            raise ValueError(f"{name} names no EOS token, which every document sequence ends with: pass "
                             "--eos-token TOKEN (for example </s> or <|endoftext|>), or a folder whose "
                             "tokenizer_config.json has an eos_token")
        if eos not in vocab:
            raise ValueError(f"{name}: the EOS token {eos!r} is not in its vocabulary; pass --eos-token with one "
                             "of its special tokens")
        self.eos_token, self.eos_id = eos, int(vocab[eos])
        bos = _token_name(config.get("bos_token"))
        self.bos_id: int = int(vocab[bos]) if bos in vocab else -1
        unk = _token_name(config.get("unk_token"))
        self.unk_id: int = int(vocab[unk]) if unk in vocab else -1

    def __reduce__(self):  # picklable (Beam may serialize it): rebuilt from the two files' bytes
        return (HFTokenizer, (self._json, self._config_json, self.model_path))

    @property
    def model_proto(self) -> bytes:
        """The bytes of tokenizer.json."""
        return self._json

    @property
    def config_json(self) -> bytes:
        """The bytes of the data directory's tokenizer_config.json."""
        return self._config_json

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (no BOS, no EOS, no post-processing)."""
        return self._backend.encode(text, add_special_tokens=False).ids

    def encode_document(self, text: str) -> np.ndarray:
        """A document's sequence: ids of ``text`` followed by EOS, as int32 of shape (len + 1,)."""
        ids = np.empty(0, np.int32)
        if text:
            ids = np.asarray(self._backend.encode(text, add_special_tokens=False).ids, dtype=np.int32)
        return np.append(ids, np.int32(self.eos_id))

    def decode(self, ids) -> str:
        """Text of ``ids``; special tokens (EOS, BOS) decode to nothing."""
        return self._backend.decode([int(i) for i in ids], skip_special_tokens=True)

    @classmethod
    def from_file(cls, path: str) -> "HFTokenizer":
        """A data or run directory's tokenizer.json, with the tokenizer_config.json beside it."""
        config_path = os.path.join(os.path.dirname(os.path.abspath(path)), HF_CONFIG_NAME)
        if not os.path.isfile(config_path):
            raise FileNotFoundError(f"{config_path} is missing: a prepared tokenizer.json comes with the "
                                    "tokenizer_config.json that names its EOS token; copy both")
        with open(path, "rb") as f, open(config_path, "rb") as g:
            return cls(f.read(), g.read(), path)


def _read(path: str) -> bytes:
    from apache_beam.io.filesystems import FileSystems

    with FileSystems.open(path) as f:
        return f.read()


def _exists(path: str) -> bool:
    from apache_beam.io.filesystems import FileSystems

    return FileSystems.exists(path)


def _download(name: str) -> tuple[bytes, bytes | None]:
    """tokenizer.json and (when the repository has one) tokenizer_config.json of Hub repository ``name``."""
    try:
        from huggingface_hub import hf_hub_download
    except ImportError as e:
        raise FileNotFoundError(f"--tokenizer {name} is not a file or folder, and huggingface_hub (to download "
                                "it from the Hugging Face Hub) is not installed") from e
    try:
        tokenizer = hf_hub_download(name, HF_TOKENIZER_NAME)
    except Exception as e:  # offline, unknown repository, gated model: the Hub's own message says which
        raise FileNotFoundError(
            f"--tokenizer {name} is not a file or folder, and downloading {HF_TOKENIZER_NAME} of {name!r} from the "
            f"Hugging Face Hub failed ({type(e).__name__}: {e}); download it where the Hub is reachable and pass "
            "the folder") from e
    try:
        config = hf_hub_download(name, HF_CONFIG_NAME)
    except Exception:  # optional: --eos-token can stand in for it
        config = None
    with open(tokenizer, "rb") as f:
        tokenizer_json = f.read()
    if config is None:
        return tokenizer_json, None
    with open(config, "rb") as f:
        return tokenizer_json, f.read()


def resolve_hf_tokenizer(spec: str, eos_token: str | None = None) -> HFTokenizer:
    """The HFTokenizer that ``--tokenizer SPEC`` names (see the module docstring), checked: it loads, has an EOS
    token, and every special-token name it is given exists. Raises FileNotFoundError / ValueError naming SPEC."""
    if os.path.isdir(spec):
        path = os.path.join(spec, HF_TOKENIZER_NAME)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"--tokenizer {spec} is a folder without {HF_TOKENIZER_NAME}: pass a Hugging Face "
                                    "tokenizer folder, a tokenizer.json, or a SentencePiece .model file")
        tokenizer_json = _read(path)
        config_path = os.path.join(spec, HF_CONFIG_NAME)
        config = _read(config_path) if os.path.isfile(config_path) else None
    elif spec.endswith(".json") and _exists(spec):
        tokenizer_json = _read(spec)
        config_path = spec[: len(spec) - len(os.path.basename(spec))] + HF_CONFIG_NAME
        config = _read(config_path) if config_path != spec and _exists(config_path) else None
    else:
        tokenizer_json, config = _download(spec)
    try:
        source = json.loads(config.decode("utf-8")) if config is not None else {}
    except (UnicodeDecodeError, ValueError) as e:
        raise ValueError(f"--tokenizer {spec}: its tokenizer_config.json is not JSON ({e})") from e
    if not isinstance(source, dict):
        raise ValueError(f"--tokenizer {spec}: its tokenizer_config.json is not a JSON object")
    eos = eos_token or _token_name(source.get("eos_token"))
    if eos is None:
        raise ValueError(f"--tokenizer {spec} names no EOS token (no tokenizer_config.json with an eos_token): pass "
                         "--eos-token TOKEN with the special token that ends a document, e.g. </s> or <|endoftext|>")
    tok = HFTokenizer(tokenizer_json, data_config(source, eos), spec)
    return tok
