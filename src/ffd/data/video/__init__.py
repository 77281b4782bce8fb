"""Videos as face crops: decode and sample frames, find and track the face, crop it, cache the crops.

A video data set becomes an image data set here: each sampled frame's face crop is a PNG
in a cache keyed by the video's content and every setting that shapes the crops, and a
manifest row points at it (with the video, frame, method and identity), so the image
pipeline (splits, feature cache, training, eval) runs unchanged.
"""
