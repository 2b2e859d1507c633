"""Image sources: raw layouts, annotations, image decoding, boxes, thumbnails."""
