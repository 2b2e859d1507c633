"""The private parts of cleanlab, timm and pytorch-grad-cam, each behind a version check."""
