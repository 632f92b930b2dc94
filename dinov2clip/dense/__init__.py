"""Text to patches, on the floor: the segmentation metric, the open-vocabulary segmentation
protocol (short side, sliding window, upsampling, background channel) and the dense heads that
turn a backbone's patch tokens into features a text embedding can be compared with."""
