"""The Hugging Face Hub: dataset card, parquet shards, the push."""
