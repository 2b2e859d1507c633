"""ImageNet-Clean: the DVC stage doors and, in subpackages by concern, their library."""
