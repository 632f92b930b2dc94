"""The published class lists of the segmentation benchmarks (mmsegmentation's dataset classes),
in the order of the label values each dataset's own files use, and the names the GroupViT / TCL
/ FreeDA / Talk2DINO line of work prompts VOC and Context with where they differ. sources.py
derives every label mapping from these lists; nothing here is a value -> class table."""

from __future__ import annotations

# Pascal VOC 2012: SegmentationClass palette index = position here (0 background), 255 the
# object borders. mmsegmentation's PascalVOCDataset.
VOC = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
       "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
       "sheep", "sofa", "train", "tvmonitor")

# The names GroupViT's dataset classes prompt VOC and Context with where they differ from the
# lists above (TCL, FreeDA and Talk2DINO evaluate through those classes): "a photo of a table",
# not "a photo of a diningtable". classes.json keeps both; the eval prompts with these.
VOC_PROMPT_NAMES = {"diningtable": "table", "pottedplant": "plant", "tvmonitor": "monitor"}
CONTEXT_PROMPT_NAMES = {**VOC_PROMPT_NAMES, "aeroplane": "airplane"}

# Pascal Context (VOC2010 images, mmsegmentation's converted SegmentationClassContext): label
# value = position here, 0 background. mmsegmentation's PascalContextDataset (its 59-class set
# is this without background), in the alphabetical order of the Detail API ids the converter
# sorts.
CONTEXT = ("background", "aeroplane", "bag", "bed", "bedclothes", "bench", "bicycle", "bird",
           "boat", "book", "bottle", "building", "bus", "cabinet", "car", "cat", "ceiling",
           "chair", "cloth", "computer", "cow", "cup", "curtain", "dog", "door", "fence", "floor",
           "flower", "food", "grass", "ground", "horse", "keyboard", "light", "motorbike",
           "mountain", "mouse", "person", "plate", "platform", "pottedplant", "road", "rock",
           "sheep", "shelves", "sidewalk", "sign", "sky", "snow", "sofa", "table", "track",
           "train", "tree", "truck", "tvmonitor", "wall", "water", "window", "wood")

# ADE20K (ADEChallengeData2016): label value = position here + 1; 0 is "other", ignored.
# mmsegmentation's ADE20KDataset (whose "bed " carries a stray space, dropped here).
ADE20K = ("wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane",
          "grass", "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant",
          "curtain", "chair", "car", "water", "painting", "sofa", "shelf", "house", "sea",
          "mirror", "rug", "field", "armchair", "seat", "fence", "desk", "rock", "wardrobe",
          "lamp", "bathtub", "railing", "cushion", "base", "box", "column", "signboard",
          "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace",
          "refrigerator", "grandstand", "path", "stairs", "runway", "case", "pool table",
          "pillow", "screen door", "stairway", "river", "bridge", "bookcase", "blind",
          "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove",
          "palm", "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine",
          "hovel", "bus", "towel", "light", "truck", "tower", "chandelier", "awning",
          "streetlight", "booth", "television receiver", "airplane", "dirt track", "apparel",
          "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet", "poster",
          "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything",
          "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag", "minibike",
          "cradle", "oven", "ball", "food", "step", "tank", "trade name", "microwave", "pot",
          "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture", "hood",
          "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen",
          "plate", "monitor", "bulletin board", "shower", "radiator", "glass", "clock", "flag")

# COCO-Stuff's label list (nightrome/cocostuff labels.md), ids 1..182 in order: 1..91 things
# (COCO's category ids), 92..182 stuff. The stuffthingmaps PNGs store id - 1, 255 unlabeled.
COCO_STUFF_LABELS = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "street sign", "stop sign", "parking meter", "bench", "bird",
    "cat", "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "hat",
    "backpack", "umbrella", "shoe", "eye glasses", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard",
    "surfboard", "tennis racket", "bottle", "plate", "wine glass", "cup", "fork", "knife",
    "spoon", "bowl", "banana", "apple", "sandwich", "orange", "broccoli", "carrot", "hot dog",
    "pizza", "donut", "cake", "chair", "couch", "potted plant", "bed", "mirror", "dining table",
    "window", "desk", "toilet", "door", "tv", "laptop", "mouse", "remote", "keyboard",
    "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "blender", "book",
    "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush", "hair brush",
    "banner", "blanket", "branch", "bridge", "building-other", "bush", "cabinet", "cage",
    "cardboard", "carpet", "ceiling-other", "ceiling-tile", "cloth", "clothes", "clouds",
    "counter", "cupboard", "curtain", "desk-stuff", "dirt", "door-stuff", "fence",
    "floor-marble", "floor-other", "floor-stone", "floor-tile", "floor-wood", "flower", "fog",
    "food-other", "fruit", "furniture-other", "grass", "gravel", "ground-other", "hill",
    "house", "leaves", "light", "mat", "metal", "mirror-stuff", "moss", "mountain", "mud",
    "napkin", "net", "paper", "pavement", "pillow", "plant-other", "plastic", "platform",
    "playingfield", "railing", "railroad", "river", "road", "rock", "roof", "rug", "salad",
    "sand", "sea", "shelf", "sky-other", "skyscraper", "snow", "solid-other", "stairs", "stone",
    "straw", "structural-other", "table", "tent", "textile-other", "towel", "tree", "vegetable",
    "wall-brick", "wall-concrete", "wall-other", "wall-panel", "wall-stone", "wall-tile",
    "wall-wood", "water-other", "waterdrops", "window-blind", "window-other", "wood")
COCO_THING_IDS = 91  # ids 1..91 are things
# The 11 thing classes removed from COCO: no annotation in any image (cocostuff README).
COCO_REMOVED = ("street sign", "hat", "shoe", "eye glasses", "plate", "mirror", "window",
                "desk", "door", "blender", "hair brush")

# Cityscapes: the 19 evaluated classes in trainId order, each with its labelId
# (cityscapesScripts helpers/labels.py); every other labelId has trainId 255.
CITYSCAPES = (("road", 7), ("sidewalk", 8), ("building", 11), ("wall", 12), ("fence", 13),
              ("pole", 17), ("traffic light", 19), ("traffic sign", 20), ("vegetation", 21),
              ("terrain", 22), ("sky", 23), ("person", 24), ("rider", 25), ("car", 26),
              ("truck", 27), ("bus", 28), ("train", 31), ("motorcycle", 32), ("bicycle", 33))
CITYSCAPES_LABEL_IDS = 34  # labelIds 0..33 (license plate's -1 is never drawn)
