"""The models floor: preprocessing, backbone and teacher loaders, weight identity, projectors and
the DinoV2Clip inference API. Stages and use commands import from here; nothing here imports a
stage."""
