"""The method: confident learning, evidence, decision strategies, CAMs, overrides, references."""
