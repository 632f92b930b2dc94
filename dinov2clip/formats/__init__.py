"""File formats every stage reads: webdataset tars (the extract stage's and img2dataset's) and
image files (listing, decoding into skip reasons, thumbnails). Nothing here imports a stage."""
