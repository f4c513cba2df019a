"""Captioned emoji pictures: Noto Color Emoji glyphs, recoloured, on coloured backgrounds.

    python recipes/emoji.py --out data/emoji --n 20000 [--size 128] [--seed 0]

Needs the Debian package fonts-noto-color-emoji (font: SIL Open Font License 1.1). The glyphs are
colour bitmaps that FreeType only renders at 109 px; their alpha channel is an exact object
mask. The object vocabulary is OBJECTS below (a curated list of glyphs with clear, single-object
pictures); `unicodedata.name` of each glyph is recorded in objects.json beside the data.
This script is text2img.py restricted to emoji; see that file for the captions.
"""

from __future__ import annotations

import os
import unicodedata
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from _common import Sprite

FONT_PATHS = [
    "/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf",
    "/usr/share/fonts/noto/NotoColorEmoji.ttf",
]
BITMAP_SIZE = 109  # the only size at which the colour bitmap font renders

# (glyph, caption word, broader word). Captions use either word, so "bird" covers parrots,
# ducks and owls too. Words that are also colour names (orange) are avoided.
OBJECTS: list[tuple[str, str, str]] = [
    # birds
    ("\U0001F426", "bird", "bird"), ("\U0001F99C", "parrot", "bird"), ("\U0001F54A", "dove", "bird"),
    ("\U0001F986", "duck", "bird"), ("\U0001F989", "owl", "bird"), ("\U0001F427", "penguin", "bird"),
    ("\U0001F985", "eagle", "bird"), ("\U0001F413", "rooster", "bird"), ("\U0001F9A2", "swan", "bird"),
    ("\U0001F9A9", "flamingo", "bird"), ("\U0001F424", "chick", "bird"),
    # other animals
    ("\U0001F408", "cat", "cat"), ("\U0001F431", "cat", "cat"), ("\U0001F415", "dog", "dog"),
    ("\U0001F436", "dog", "dog"), ("\U0001F41F", "fish", "fish"), ("\U0001F420", "fish", "fish"),
    ("\U0001F421", "blowfish", "fish"), ("\U0001F40E", "horse", "horse"), ("\U0001F404", "cow", "cow"),
    ("\U0001F416", "pig", "pig"), ("\U0001F411", "sheep", "sheep"), ("\U0001F407", "rabbit", "rabbit"),
    ("\U0001F422", "turtle", "turtle"), ("\U0001F40D", "snake", "snake"),
    ("\U0001F98B", "butterfly", "butterfly"), ("\U0001F40C", "snail", "snail"),
    ("\U0001F418", "elephant", "elephant"), ("\U0001F992", "giraffe", "giraffe"),
    ("\U0001F40A", "crocodile", "crocodile"), ("\U0001F980", "crab", "crab"),
    ("\U0001F419", "octopus", "octopus"), ("\U0001F42C", "dolphin", "dolphin"),
    ("\U0001F40B", "whale", "whale"), ("\U0001F988", "shark", "shark"), ("\U0001F438", "frog", "frog"),
    ("\U0001F41D", "bee", "bee"), ("\U0001F41E", "ladybug", "ladybug"),
    ("\U0001F994", "hedgehog", "hedgehog"), ("\U0001F43F", "squirrel", "squirrel"),
    ("\U0001F98A", "fox", "fox"), ("\U0001F43B", "bear", "bear"), ("\U0001F43C", "panda", "bear"),
    ("\U0001F981", "lion", "lion"), ("\U0001F42F", "tiger", "tiger"), ("\U0001F412", "monkey", "monkey"),
    ("\U0001F401", "mouse", "mouse"), ("\U0001F995", "dinosaur", "dinosaur"),
    ("\U0001F996", "dinosaur", "dinosaur"),
    # vehicles
    ("\U0001F697", "car", "car"), ("\U0001F699", "car", "car"), ("\U0001F3CE", "race car", "car"),
    ("\U0001F695", "taxi", "car"), ("\U0001F693", "police car", "car"), ("\U0001F68C", "bus", "bus"),
    ("\U0001F69A", "truck", "truck"), ("\U0001F69B", "truck", "truck"), ("\U0001F692", "fire truck", "truck"),
    ("\U0001F69C", "tractor", "tractor"), ("\U0001F6B2", "bicycle", "bicycle"),
    ("\U0001F3CD", "motorcycle", "motorcycle"), ("\U0001F6F5", "scooter", "scooter"),
    ("\u2708", "airplane", "airplane"), ("\U0001F681", "helicopter", "helicopter"),
    ("\U0001F680", "rocket", "rocket"), ("\u26F5", "sailboat", "boat"), ("\U0001F6A4", "speedboat", "boat"),
    ("\U0001F6F6", "canoe", "boat"), ("\U0001F6A2", "ship", "ship"), ("\U0001F682", "train", "train"),
    ("\U0001F691", "ambulance", "ambulance"),
    # food
    ("\U0001F34E", "apple", "apple"), ("\U0001F34F", "apple", "apple"), ("\U0001F350", "pear", "pear"),
    ("\U0001F34A", "tangerine", "tangerine"), ("\U0001F34B", "lemon", "lemon"),
    ("\U0001F34C", "banana", "banana"), ("\U0001F349", "watermelon", "watermelon"),
    ("\U0001F347", "grapes", "grapes"), ("\U0001F353", "strawberry", "strawberry"),
    ("\U0001F352", "cherries", "cherries"), ("\U0001F351", "peach", "peach"),
    ("\U0001F34D", "pineapple", "pineapple"), ("\U0001F95D", "kiwi", "kiwi"),
    ("\U0001F345", "tomato", "tomato"), ("\U0001F346", "eggplant", "eggplant"),
    ("\U0001F955", "carrot", "carrot"), ("\U0001F33D", "corn", "corn"),
    ("\U0001F966", "broccoli", "broccoli"), ("\U0001F344", "mushroom", "mushroom"),
    ("\U0001F950", "croissant", "croissant"), ("\U0001F35E", "bread", "bread"),
    ("\U0001F9C0", "cheese", "cheese"), ("\U0001F354", "burger", "burger"), ("\U0001F355", "pizza", "pizza"),
    ("\U0001F369", "doughnut", "doughnut"), ("\U0001F36A", "cookie", "cookie"), ("\U0001F382", "cake", "cake"),
    ("\U0001F366", "ice cream", "ice cream"), ("\U0001F36D", "lollipop", "lollipop"),
    ("\u2615", "cup", "cup"), ("\U0001F377", "wine glass", "glass"),
    # plants and nature
    ("\U0001F333", "tree", "tree"), ("\U0001F332", "fir tree", "tree"), ("\U0001F334", "palm tree", "tree"),
    ("\U0001F335", "cactus", "cactus"), ("\U0001F337", "tulip", "flower"), ("\U0001F339", "rose", "flower"),
    ("\U0001F33B", "sunflower", "flower"), ("\U0001F33C", "flower", "flower"),
    ("\U0001F338", "blossom", "flower"), ("\U0001F341", "leaf", "leaf"), ("\U0001F340", "clover", "clover"),
    ("\u2600", "sun", "sun"), ("\U0001F319", "moon", "moon"), ("\u2B50", "star", "star"),
    ("\u2601", "cloud", "cloud"), ("\u26A1", "lightning bolt", "lightning bolt"),
    ("\u2744", "snowflake", "snowflake"), ("\U0001F525", "fire", "fire"), ("\U0001F4A7", "drop", "drop"),
    ("\U0001FAB4", "potted plant", "plant"),
    # things
    ("\U0001F3E0", "house", "house"), ("\U0001F3F0", "castle", "castle"), ("\u26BD", "soccer ball", "ball"),
    ("\U0001F3C0", "basketball", "ball"), ("\U0001F388", "balloon", "balloon"), ("\U0001F381", "gift", "gift"),
    ("\U0001F451", "crown", "crown"), ("\U0001F3A9", "top hat", "hat"), ("\U0001F452", "sun hat", "hat"),
    ("\U0001F9E2", "cap", "hat"), ("\U0001F455", "t-shirt", "shirt"), ("\U0001F457", "dress", "dress"),
    ("\U0001F45F", "sneaker", "shoe"), ("\U0001F460", "high heel", "shoe"), ("\U0001F45C", "handbag", "bag"),
    ("\U0001F392", "backpack", "bag"), ("\U0001F302", "umbrella", "umbrella"),
    ("\u2602", "umbrella", "umbrella"), ("\U0001F511", "key", "key"), ("\U0001F512", "lock", "lock"),
    ("\U0001F514", "bell", "bell"), ("\U0001F4A1", "light bulb", "light bulb"),
    ("\U0001F56F", "candle", "candle"), ("\U0001F4D5", "book", "book"), ("\u270F", "pencil", "pencil"),
    ("\u2702", "scissors", "scissors"), ("\U0001F528", "hammer", "hammer"), ("\U0001FA91", "chair", "chair"),
    ("\U0001F6CF", "bed", "bed"), ("\U0001F6AA", "door", "door"), ("\u23F0", "alarm clock", "clock"),
    ("\u231A", "watch", "watch"), ("\U0001F4F1", "phone", "phone"), ("\U0001F4BB", "laptop", "laptop"),
    ("\U0001F4F7", "camera", "camera"), ("\U0001F3B8", "guitar", "guitar"), ("\U0001F941", "drum", "drum"),
    ("\U0001F3BA", "trumpet", "trumpet"), ("\U0001F3BB", "violin", "violin"), ("\u2693", "anchor", "anchor"),
    ("\U0001F9F8", "teddy bear", "teddy bear"), ("\u2764", "heart", "heart"), ("\u26C4", "snowman", "snowman"),
    ("\U0001F9F2", "magnet", "magnet"), ("\U0001FAA3", "bucket", "bucket"), ("\U0001F9E6", "socks", "socks"),
    ("\U0001F9E4", "gloves", "gloves"), ("\U0001F576", "sunglasses", "glasses"),
    ("\U0001F453", "glasses", "glasses"), ("\U0001F48E", "gem", "gem"), ("\U0001F3C6", "trophy", "trophy"),
    ("\U0001F380", "bow", "bow"),
]


def font_path() -> str | None:
    """The colour emoji font: $EMOJI_FONT when set, else where fonts-noto-color-emoji put it, else None."""
    for p in [os.environ.get("EMOJI_FONT"), *FONT_PATHS]:
        if p and Path(p).is_file():
            return p
    return None


def render_glyph(font: ImageFont.FreeTypeFont, ch: str) -> np.ndarray:
    """One emoji glyph as a tight RGBA crop (uint8 [H, W, 4]); about 130 px on its long side."""
    im = Image.new("RGBA", (160, 160), (0, 0, 0, 0))
    ImageDraw.Draw(im).text((4, 4), ch, font=font, embedded_color=True)
    box = im.getbbox()
    if box is None:
        raise ValueError(f"the emoji font has no picture for {unicodedata.name(ch, hex(ord(ch)))}")
    return np.asarray(im.crop(box))


def load_sprites() -> list[Sprite]:
    """Render every glyph of OBJECTS (a few milliseconds each)."""
    path = font_path()
    if path is None:
        raise SystemExit("fonts-noto-color-emoji is not installed: apt-get install -y fonts-noto-color-emoji")
    font = ImageFont.truetype(path, BITMAP_SIZE)
    sprites = []
    for ch, name, kind in OBJECTS:
        rgba = render_glyph(font, ch)
        sprites.append(Sprite(name, kind, f"emoji:U+{ord(ch):04X}", rgba))
    return sprites


def glyph_names() -> dict[str, str]:
    """Unicode name of every glyph in OBJECTS, keyed by 'U+XXXX'."""
    return {f"U+{ord(ch):04X}": unicodedata.name(ch, "") for ch, _, _ in OBJECTS}


if __name__ == "__main__":
    import text2img

    text2img.main(default_sources="emoji", prog="emoji.py")
