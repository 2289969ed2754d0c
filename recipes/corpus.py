"""The recipes' data: texts (the embedded corpus or any `datasets` source), a tokenizer (the model's own, or a
byte-level BPE trained on the corpus and cached), tokenized rows (packed or one document per row), and the
fixed global batches that every run, every implementation and every process count share."""
import hashlib
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

CACHE = Path(os.environ.get("HF_SDPA_CACHE", Path.home() / ".cache" / "hf_sdpa"))
SPECIALS = {"pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>"}


class DataError(SystemExit):
    """Bad data options: raised before any training starts, with what to do instead."""


def _digest(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def embedded_texts() -> dict:
    """CPython's own documentation (`pydoc_data.topics`), one paragraph per document; every tenth topic is
    held out, so no held-out paragraph shares a topic with training."""
    from pydoc_data.topics import topics
    splits = {"train": [], "validation": []}
    for i, name in enumerate(sorted(topics)):
        paragraphs = [p.strip() for p in topics[name].split("\n\n") if p.strip()]
        splits["validation" if i % 10 == 0 else "train"].extend(paragraphs)
    return splits


def load_texts(dataset: str | None, text_column: str = "text", seed: int = 0) -> dict:
    """{"train": [...], "validation": [...]} from the embedded corpus (None), local files (.txt, .json, .jsonl,
    .csv, .parquet, comma separated) or a `datasets` name. Without a validation split, 10% of train is held out."""
    if dataset is None:
        return embedded_texts()
    import datasets
    files = dataset.split(",")
    builders = {".txt": "text", ".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}
    suffix = Path(files[0]).suffix
    try:
        if all(Path(f).is_file() for f in files):
            if suffix not in builders:
                raise DataError(f"--dataset {dataset}: unknown file type {suffix!r}; use one of {sorted(builders)}")
            ds = datasets.load_dataset(builders[suffix], data_files={"train": files})
        else:
            ds = datasets.load_dataset(dataset)
    except (FileNotFoundError, ValueError, ConnectionError) as exc:
        raise DataError(f"--dataset {dataset}: cannot load it ({exc}). Give local files or a dataset "
                        f"name you can reach, or leave --dataset out for the embedded corpus.") from exc
    if text_column not in ds["train"].column_names:
        raise DataError(f"--dataset {dataset} has no column {text_column!r} (it has "
                        f"{ds['train'].column_names}); pass --text-column with one of them.")
    held = next((s for s in ("validation", "test") if s in ds), None)
    if held is None:
        parts = ds["train"].train_test_split(test_size=0.1, seed=seed)
        ds, held = {"train": parts["train"], "validation": parts["test"]}, "validation"
    return {split: _text_rows(rows[text_column], split) for split, rows in (("train", ds["train"]),
                                                                             ("validation", ds[held]))}


def _text_rows(rows: list, split: str) -> list:
    """The rows that hold text; the others (None, numbers, empty strings) are skipped and counted aloud."""
    texts = [t for t in rows if isinstance(t, str) and t.strip()]
    if len(texts) < len(rows):
        print(f"{split}: skipped {len(rows) - len(texts)} of {len(rows)} rows that hold no text", file=sys.stderr)
    return texts


def trained_tokenizer(texts: list, vocab_size: int):
    """A byte-level BPE tokenizer trained on `texts`, cached by content, as a `PreTrainedTokenizerFast`."""
    from transformers import PreTrainedTokenizerFast
    path = CACHE / "tokenizers" / _digest(texts, vocab_size)
    if not (path / "tokenizer.json").exists():
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIALS.values()),
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
        tok.train_from_iterator(texts, trainer)
        fast = PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIALS)
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        fast.save_pretrained(tmp)
        if path.exists():  # another process finished the same tokenizer first
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, path)
    return PreTrainedTokenizerFast.from_pretrained(path)


def tokenized(texts: list, tokenizer) -> list:
    """Token ids of each text, through `datasets.map` (batched) with its result cached on disk."""
    import datasets
    name = getattr(tokenizer, "name_or_path", "") or ""
    key = _digest(texts, name, len(tokenizer), tokenizer.backend_tokenizer.to_str()[:100000])
    cache = CACHE / "tokenized" / f"{key}.arrow"
    cache.parent.mkdir(parents=True, exist_ok=True)
    ds = datasets.Dataset.from_dict({"text": texts})
    ds = ds.map(lambda b: {"ids": tokenizer(b["text"], add_special_tokens=False)["input_ids"]}, batched=True,
                remove_columns=["text"], cache_file_name=str(cache), load_from_cache_file=True,
                desc="tokenizing")
    return ds["ids"]


def rows_from_docs(docs: list, seq_len: int, bos: int, eos: int, packing: bool) -> list:
    """Training rows as dicts of lists. Packing: documents back to back with EOS between them, cut into full
    rows of `seq_len`, `position_ids` restarting at 0 with each document. Otherwise one document per row
    (BOS + ids + EOS), a long one split into several rows, padded later per batch."""
    rows = []
    if packing:
        ids, pos = [], []
        for doc in docs:
            piece = [bos] + doc + [eos]
            ids += piece
            pos += range(len(piece))
        for start in range(0, len(ids) - seq_len + 1, seq_len):
            rows.append({"input_ids": ids[start:start + seq_len], "position_ids": pos[start:start + seq_len]})
    else:
        for doc in docs:
            piece = [bos] + doc + [eos]
            rows += [{"input_ids": piece[s:s + seq_len]} for s in range(0, len(piece), seq_len)
                     if len(piece[s:s + seq_len]) > 1]
    return rows


def collate(rows: list, pad_id: int, padding_side: str = "right") -> dict:
    """One micro-batch as tensors. Targets are the next tokens (-100 where there is none: padding, and the
    first token of a packed document, which the model cannot see coming)."""
    width = max(len(r["input_ids"]) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        n = len(r["input_ids"])
        cols = slice(width - n, width) if padding_side == "left" else slice(0, n)
        ids[i, cols] = torch.tensor(r["input_ids"])
        mask[i, cols] = 1
    targets = ids.masked_fill(mask == 0, -100)[:, 1:].clone()
    batch = {"input_ids": ids, "targets": targets}
    if "position_ids" in rows[0]:
        pos = torch.tensor([r["position_ids"] for r in rows])
        targets[pos[:, 1:] == 0] = -100
        batch["position_ids"] = pos
    else:
        batch["attention_mask"] = mask
    return batch


@dataclass
class GlobalBatches:
    """Which rows make up global step k: a seeded permutation per epoch, cut into global batches. A process
    takes its own slice of each micro-batch, so 1 process x batch 8, 2 x 4 and 1 x 4 with accumulation 2 all
    see the same rows at the same step."""
    num_rows: int
    global_batch: int
    seed: int

    def indices(self, step: int) -> list:
        out, pos = [], step * self.global_batch
        while len(out) < self.global_batch:
            epoch, offset = divmod(pos, self.num_rows)
            order = torch.randperm(self.num_rows, generator=torch.Generator().manual_seed(self.seed + epoch))
            take = min(self.global_batch - len(out), self.num_rows - offset)
            out += order[offset:offset + take].tolist()
            pos += take
        return out

    def micro_batches(self, step: int, rank: int, world: int, micro: int) -> list:
        """The row indices of each of this process's micro-batches at `step`."""
        idx = self.indices(step)
        per = self.global_batch // (world * micro)
        return [idx[(m * world + rank) * per:(m * world + rank + 1) * per] for m in range(micro)]
