"""Raw text -> tokenizer -> token shards in OLMo's flat memmap format (HF datasets + tokenizers)."""
