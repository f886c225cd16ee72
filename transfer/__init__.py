"""Transfer evaluations (classification, detection, segmentation, probes, retrieval) of encoders exported by `pretext`."""
