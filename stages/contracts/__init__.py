"""Data contracts and configuration: file formats, schemas, params, errors, labels."""
