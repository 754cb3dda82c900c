"""olmo-tokenize: text files or a hub dataset -> token shards (OLMo's flat memmap format + metadata).

    olmo-tokenize data/*.jsonl --out tokens/web --tokenizer dolma2/tokenizer.json --workers 8
    olmo-tokenize data/*.txt --out tokens/small --train-vocab-size 8192     # trains a byte-level BPE first
    olmo-tokenize --stdlib                                                 # builds the default corpus
"""

from __future__ import annotations

import argparse
import os
import sys

from data_pipelines.stdlib_corpus import DEFAULT_MAX_CHARS, build_stdlib_corpus
from data_pipelines.tokenize import load_text_dataset, tokenize_to_shards
from data_pipelines.tokenizer import load_tokenizer, train_bpe
from olmo_train.data.config import default_cache_dir
from olmo_train.errors import OlmoTrainError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="olmo-tokenize", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="*", help="jsonl / json / parquet / txt files (globs ok), or one hub dataset id")
    p.add_argument("--out", help="output directory of the token shards")
    p.add_argument("--tokenizer", help="tokenizer.json path, a directory holding one, or a hub name")
    p.add_argument("--train-vocab-size", type=int, default=None,
                   help="no --tokenizer: train a byte-level BPE of this size on the inputs (saved in --out)")
    p.add_argument("--eos", default=None, help="the EOS token (default: found among common names)")
    p.add_argument("--text-field", default="text")
    p.add_argument("--split", default="train", help="hub datasets: the split")
    p.add_argument("--name", default=None, help="hub datasets: the configuration name")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="tokenizer processes")
    p.add_argument("--docs-per-shard", type=int, default=10_000)
    p.add_argument("--overwrite", action="store_true", help="replace shards of another job in --out")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--stdlib", action="store_true", help="build the default stdlib corpus in --cache-dir")
    p.add_argument("--cache-dir", default=None, help="for --stdlib (default: $OLMO_TRAIN_CACHE or ~/.cache)")
    p.add_argument("--max-chars", type=int, default=DEFAULT_MAX_CHARS, help="for --stdlib: corpus size cap")
    return p


def run(args: argparse.Namespace) -> str:
    if args.stdlib:
        return build_stdlib_corpus(args.cache_dir or default_cache_dir(), tokenizer=args.tokenizer,
                                   max_chars=args.max_chars, num_workers=args.workers, progress=not args.no_progress)
    if not args.inputs or not args.out:
        raise SystemExit("olmo-tokenize: give INPUTS and --out (or --stdlib); see --help")
    dataset = load_text_dataset(args.inputs, text_field=args.text_field, split=args.split, name=args.name)
    if args.tokenizer:
        tok, spec = load_tokenizer(args.tokenizer), args.tokenizer
    else:
        tok = train_bpe(iter(dataset[args.text_field]), args.train_vocab_size or 32_000, eos=args.eos or
                        "<|endoftext|>", length=len(dataset))
        os.makedirs(args.out, exist_ok=True)
        spec = os.path.join(args.out, "tokenizer.json")
        tok.save(spec)
    tokenize_to_shards(dataset, args.out, tok, text_field=args.text_field, docs_per_shard=args.docs_per_shard,
                       num_workers=args.workers, source=" ".join(args.inputs), eos=args.eos, tokenizer_spec=spec,
                       overwrite=args.overwrite, progress=not args.no_progress)
    return args.out


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    try:
        out = run(args)
    except OlmoTrainError as e:
        print(f"olmo-tokenize: error: {e}", file=sys.stderr)
        raise SystemExit(2) from e
    print(out)


if __name__ == "__main__":
    main()
