"""Captioned clip-art pictures: curated Open Clip Art Library PNGs, recoloured, on coloured
backgrounds.

    python recipes/clipart.py --out data/clipart --n 5000 [--size 128] [--seed 0]

Needs the Debian package openclipart-png (public domain dedication). The package holds about
8,000 PNGs in category folders, of uneven use for captions (signs, icons, scenes, duplicates), so
this recipe reads only the curated list CLIPART below: single objects with a transparent
background, each with a caption word and a broader word shared with the emoji vocabulary
("crow" -> "bird", "jeep" -> "car"). The alpha channel is the object mask.
This script is text2img.py restricted to clip art; see that file for the captions.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from _common import Sprite, premultiply

ROOTS = ["/usr/share/openclipart/png"]
MAX_SIDE = 256  # sprites are stored at most this large (output pictures are smaller)

# (path under the package's png/ folder, caption word, broader word)
CLIPART: list[tuple[str, str, str]] = [
    ("animals/birds/acquila_architetto_franc_01.png", "eagle", "bird"),
    ("animals/birds/acquila_architetto_franc_03.png", "eagle", "bird"),
    ("animals/birds/aquila_frontale_architet_01.png", "eagle", "bird"),
    ("animals/birds/bird_of_peace_mauro_oliv_01.png", "bird", "bird"),
    ("animals/birds/cigno_architetto_frances_01.png", "swan", "bird"),
    ("animals/birds/cormorant-md.png", "cormorant", "bird"),
    ("animals/birds/crow_01.png", "crow", "bird"),
    ("animals/birds/dove_symbol.png", "dove", "bird"),
    ("animals/birds/eagle_01.png", "eagle", "bird"),
    ("animals/birds/emperor_penguin_ralf_ste_01.png", "penguin", "bird"),
    ("animals/birds/flamand_jean-victor_bali_01.png", "flamingo", "bird"),
    ("animals/birds/gabbiano_architetto_fran_01.png", "seagull", "bird"),
    ("animals/birds/gallo_di_profilo_archite_01.png", "rooster", "bird"),
    ("animals/birds/gufo_civetta_architetto__01.png", "owl", "bird"),
    ("animals/birds/gull_marcelo_staudt_01.png", "seagull", "bird"),
    ("animals/birds/jonathon_s_duck_01.png", "duck", "bird"),
    ("animals/birds/new_penguin_charles_mcco_01.png", "penguin", "bird"),
    ("animals/birds/puffin-md.png", "puffin", "bird"),
    ("animals/birds/ralf_ark.in-berlin.de_ra_01.png", "penguin", "bird"),
    ("animals/birds/seagull_nicu_buculei_01.png", "seagull", "bird"),
    ("animals/birds/simbolo_egizio_architett_01.png", "eagle", "bird"),
    ("animals/birds/tacchino_architetto_fran_01.png", "turkey", "bird"),
    ("animals/birds/uccello_bianco_e_nero_ar_01.png", "woodpecker", "bird"),
    ("animals/birds/uccello_profilo_01_archi_01.png", "bird", "bird"),
    ("animals/birds/uccello_profilo_02_archi_01.png", "bird", "bird"),
    ("signs_and_symbols/eagle_01.png", "eagle", "bird"),
    ("transportation/vehicles/car.png", "car", "car"),
    ("transportation/vehicles/road_runner_ganson.png", "car", "car"),
    ("transportation/vehicles/old_car_lumen_design_st_r.png", "car", "car"),
    ("transportation/vehicles/skoda_car_alejandro_teja_.png", "car", "car"),
    ("transportation/vehicles/blazer_01.png", "car", "car"),
    ("transportation/vehicles/4wd.png", "jeep", "car"),
    ("transportation/vehicles/1989_chevrolet_celebrit_01.png", "car", "car"),
    ("transportation/car_jamin_ellis_.png", "car", "car"),
    ("transportation/vehicles/hummer_02.png", "jeep", "car"),
    ("transportation/vehicles/hummers/hummer_03.png", "jeep", "car"),
    ("transportation/vehicles/hummers/hummer_05.png", "jeep", "car"),
    ("transportation/formula_one_car_gerald_g_01.png", "race car", "car"),
    ("people/car_ride_ganson.png", "car", "car"),
    ("transportation/aiga-symbols/aiga_taxi_.png", "taxi", "car"),
    ("transportation/vehicles/bus1_bw_jarno_vasamaa_01.png", "bus", "bus"),
    ("transportation/vehicles/bus1_jarno_vasamaa_01.png", "bus", "bus"),
    ("transportation/vehicles/bus2_bw_jarno_vasamaa_01.png", "bus", "bus"),
    ("transportation/vehicles/bus2_jarno_vasamaa_01.png", "bus", "bus"),
    ("transportation/aiga-symbols/aiga_bus_.png", "bus", "bus"),
    ("transportation/vehicles/big_truck_01.png", "truck", "truck"),
    ("transportation/vehicles/small_truck_steffen_gluc_01.png", "van", "truck"),
    ("transportation/truck_jarno_vasamaa1.png", "truck", "truck"),
    ("transportation/truck_jarno_vasamaa_.png", "truck", "truck"),
    ("transportation/vehicles/old_truck_indana_model__01.png", "truck", "truck"),
    ("transportation/vehicles/aircraft_jarno_vasamaa1.png", "airplane", "airplane"),
    ("transportation/vehicles/aircraft_jarno_vasamaa2.png", "airplane", "airplane"),
    ("transportation/vehicles/aircraft_jarno_vasamaa3.png", "airplane", "airplane"),
    ("transportation/vehicles/aircraft_jarno_vasamaa4.png", "airplane", "airplane"),
    ("transportation/vehicles/aircraft_jarno_vasamaa_.png", "airplane", "airplane"),
    ("transportation/vehicles/plane_silhouet_mo_01.png", "airplane", "airplane"),
    ("transportation/vehicles/military_airplane_mo_01.png", "jet", "airplane"),
    ("transportation/vehicles/bicycle_01.png", "bicycle", "bicycle"),
    ("transportation/vehicles/vtt_02.png", "bicycle", "bicycle"),
    ("transportation/vehicles/ambulans_romus_01.png", "ambulance", "ambulance"),
    ("transportation/vehicles/rocket.png", "rocket", "rocket"),
    ("transportation/vehicles/trattore_architetto_fran_01.png", "tractor", "tractor"),
    ("transportation/vehicles/trawler_01.png", "boat", "boat"),
    ("animals/mammals/cartoon_cat_gerald_g._01.png", "cat", "cat"),
    ("animals/mammals/cartoon_cat_gerald_g._02.png", "cat", "cat"),
    ("animals/mammals/coniglio_architetto_fran_01.png", "rabbit", "rabbit"),
    ("animals/mammals/contour_chipmunk.png", "chipmunk", "squirrel"),
    ("animals/mammals/angry_monkey_benji_park_01.png", "monkey", "monkey"),
    ("animals/mammals/happy_monkey_benji_park_01.png", "monkey", "monkey"),
    ("animals/mammals/monkey_head_nicu_buculei_01.png", "monkey", "monkey"),
    ("animals/mammals/contour_baboon.png", "baboon", "monkey"),
    ("animals/mammals/contour_elephant.png", "elephant", "elephant"),
    ("animals/mammals/elefante01_architetto_fr_01.png", "elephant", "elephant"),
    ("animals/mammals/elefante02_architetto_fr_01.png", "elephant", "elephant"),
    ("animals/mammals/contour_fox.png", "fox", "fox"),
    ("animals/mammals/contour_giraffe.png", "giraffe", "giraffe"),
    ("animals/mammals/dog_01_drawn_with_strai_01.png", "dog", "dog"),
    ("animals/mammals/dog_02_drawn_with_strai_01.png", "dog", "dog"),
    ("animals/mammals/dog_03_drawn_with_strai_01.png", "dog", "dog"),
    ("animals/mammals/dog_04_drawn_with_strai_01.png", "dog", "dog"),
    ("animals/mammals/dog_05_drawn_with_strai_01.png", "dog", "dog"),
    ("animals/mammals/dog_06_drawn_with_strai_01.png", "dog", "dog"),
    ("animals/mammals/dolphin.png", "dolphin", "dolphin"),
    ("animals/mammals/dolphin_enrique_meza_c_01.png", "dolphin", "dolphin"),
    ("animals/mammals/dolphin_enrique_meza_c_02.png", "dolphin", "dolphin"),
    ("animals/mammals/bluewhale-md.png", "whale", "whale"),
    ("animals/mammals/orca_matthew_gates_r.png", "orca", "whale"),
    ("animals/mammals/pecora_architetto_france_01.png", "sheep", "sheep"),
    ("animals/mammals/sheep-md-v0.1.png", "sheep", "sheep"),
    ("animals/mammals/pig_marcelo_caiafa1.png", "pig", "pig"),
    ("animals/mammals/a_simple_pig_01.png", "pig", "pig"),
    ("animals/mammals/vacca_pezzata_rossa_val_01.png", "cow", "cow"),
    ("animals/mammals/bull_utrescu_.png", "bull", "cow"),
    ("animals/mammals/contour_camel.png", "camel", "camel"),
    ("animals/mammals/contour_kangaroo.png", "kangaroo", "kangaroo"),
    ("animals/mammals/canguro_architetto_franc_01.png", "kangaroo", "kangaroo"),
    ("animals/mammals/deer_matt_todd_01.png", "deer", "deer"),
    ("animals/mammals/fawn_mo_01.png", "deer", "deer"),
    ("animals/mammals/goat_nicu_buculei_01.png", "goat", "goat"),
    ("animals/mammals/seal.png", "seal", "seal"),
    ("animals/mammals/rhinoceros_architetto_fr_01.png", "rhino", "rhino"),
    ("animals/fish/altum_angelfish_01.png", "fish", "fish"),
    ("animals/fish/arctic_greyling_ganson.png", "fish", "fish"),
    ("animals/fish/brown_fish_01.png", "fish", "fish"),
    ("animals/fish/clown_loach_01.png", "fish", "fish"),
    ("animals/fish/giraffe_cichlid_01.png", "fish", "fish"),
    ("animals/fish/pescetto_arancione_archi_01.png", "fish", "fish"),
    ("animals/fish/yellow_gourami_01.png", "fish", "fish"),
    ("animals/fish/seahorse.png", "seahorse", "seahorse"),
    ("food/fruit/an_apple_01.png", "apple", "apple"),
    ("food/fruit/another_apple_01.png", "apple", "apple"),
    ("food/fruit/apple.png", "apple", "apple"),
    ("food/fruit/apple_bw.png", "apple", "apple"),
    ("food/fruit/apple_martin_schmidt-li_01r.png", "apple", "apple"),
    ("food/fruit/applf.png", "apple", "apple"),
    ("food/fruit/cartoon_apple_k_yager_01.png", "apple", "apple"),
    ("food/fruit/banana.png", "banana", "banana"),
    ("food/fruit/bananas_nicu_buculei_01.png", "bananas", "banana"),
    ("food/fruit/cherries.png", "cherries", "cherries"),
    ("food/fruit/cherry_jean_victor_balin_.png", "cherry", "cherries"),
    ("food/fruit/cherry_jonathan_dietrich_01.png", "cherry", "cherries"),
    ("food/fruit/grape_01.png", "grapes", "grapes"),
    ("food/fruit/grapes_simple.png", "grapes", "grapes"),
    ("food/fruit/grapes_simple_bw.png", "grapes", "grapes"),
    ("food/fruit/green_pear_01.png", "pear", "pear"),
    ("food/fruit/pear.png", "pear", "pear"),
    ("food/fruit/pear_01.png", "pear", "pear"),
    ("food/fruit/pear_02.png", "pear", "pear"),
    ("food/fruit/pear_simple.png", "pear", "pear"),
    ("food/fruit/pear_simple_bw.png", "pear", "pear"),
    ("food/fruit/pera_architetto_francesc_01.png", "pear", "pear"),
    ("food/fruit/lemon.png", "lemon", "lemon"),
    ("food/fruit/lemon_simple.png", "lemon", "lemon"),
    ("food/fruit/lemon_simple_bw.png", "lemon", "lemon"),
    ("food/fruit/lemon_whole_ganson.png", "lemon", "lemon"),
    ("food/fruit/orange.png", "tangerine", "tangerine"),
    ("food/fruit/orange_dave_pena_01.png", "tangerine", "tangerine"),
    ("food/fruit/orange_simple.png", "tangerine", "tangerine"),
    ("food/fruit/orange_simple_bw.png", "tangerine", "tangerine"),
    ("food/fruit/peach_simple.png", "peach", "peach"),
    ("food/fruit/peach_simple_bw.png", "peach", "peach"),
    ("food/fruit/pineapple.png", "pineapple", "pineapple"),
    ("food/fruit/prune.png", "plum", "plum"),
    ("food/fruit/strawberry.png", "strawberry", "strawberry"),
    ("food/fruit/strawberry_01.png", "strawberry", "strawberry"),
    ("food/fruit/strawberry_jonathan_diet_01.png", "strawberry", "strawberry"),
    ("food/fruit/strawberry_simple.png", "strawberry", "strawberry"),
    ("food/fruit/strawberry_simple_bw.png", "strawberry", "strawberry"),
    ("food/fruit/watermelon_simple.png", "watermelon", "watermelon"),
    ("food/fruit/watermelon_simple_bw.png", "watermelon", "watermelon"),
    ("food/vegetables/corn_cob.png", "corn", "corn"),
    ("food/vegetables/corn_cob_bw.png", "corn", "corn"),
    ("food/vegetables/what_s_up_doc_01.png", "carrot", "carrot"),
    ("plants/flowers/daffodil_jonathan_dietri_01.png", "daffodil", "flower"),
    ("plants/flowers/daffodil_susan_park_01.png", "daffodil", "flower"),
    ("plants/flowers/daisy_jonathan_dietrich_01.png", "daisy", "flower"),
    ("plants/flowers/flower1_juliane_krug_01.png", "flower", "flower"),
    ("plants/flowers/flower2_juliane_krug_01.png", "flower", "flower"),
    ("plants/flowers/flower_01.png", "flower", "flower"),
    ("plants/flowers/flower_02.png", "flower", "flower"),
    ("plants/flowers/flower_03.png", "flower", "flower"),
    ("plants/flowers/flower_peterm_01.png", "flower", "flower"),
    ("plants/flowers/funnyflower_02.png", "flower", "flower"),
    ("plants/flowers/red_flower_01.png", "flower", "flower"),
    ("plants/flowers/red_flower_03.png", "flower", "flower"),
    ("plants/flowers/red_flower_raphael_seban_01.png", "flower", "flower"),
    ("plants/flowers/sakura_01.png", "blossom", "flower"),
    ("plants/flowers/sakura_dave_pena_01.png", "blossom", "flower"),
    ("plants/flowers/tulips_ganson.png", "tulips", "flower"),
    ("plants/trees/christmas_tree_mo_01.png", "christmas tree", "tree"),
    ("plants/trees/fall_coloured_tree_geral_01.png", "tree", "tree"),
    ("plants/trees/palmtree_b_r_kessels_.png", "palm tree", "tree"),
    ("plants/trees/tree_branches_and_roots_01.png", "tree", "tree"),
    ("plants/trees/tree_whit_fruits_01.png", "tree", "tree"),
    ("plants/trees/fall_coloured_leaf_geral_01.png", "leaf", "leaf"),
    ("buildings/homes/casa_verde_architetto_fr_01.png", "house", "house"),
    ("buildings/homes/home0.png", "house", "house"),
    ("buildings/homes/home1.png", "house", "house"),
    ("buildings/homes/home12.png", "cabin", "house"),
    ("buildings/homes/home14.png", "house", "house"),
    ("buildings/homes/home2.png", "house", "house"),
    ("buildings/homes/home3.png", "cottage", "house"),
    ("buildings/homes/home6.png", "cottage", "house"),
    ("buildings/homes/home9.png", "house", "house"),
    ("buildings/homes/house.png", "house", "house"),
    ("buildings/homes/house_christoph_brill_01.png", "house", "house"),
    ("buildings/homes/house_juliane_krug_01.png", "house", "house"),
    ("buildings/homes/my_house_01.png", "house", "house"),
    ("buildings/homes/small_house_01.png", "house", "house"),
    ("buildings/homes/home10.png", "igloo", "igloo"),
    ("buildings/homes/home11.png", "tent", "tent"),
    ("buildings/homes/home13.png", "tent", "tent"),
    ("buildings/homes/lighthouse_matthew_gates_.png", "lighthouse", "lighthouse"),
]


def root() -> Path | None:
    """The clip-art tree: $OPENCLIPART_ROOT when set (the same layout, e.g. a copy holding only the files of
    CLIPART), else where openclipart-png put its PNGs, else None."""
    for r in [os.environ.get("OPENCLIPART_ROOT"), *ROOTS]:
        if r and Path(r).is_dir():
            return Path(r)
    return None


def load_png(path: Path) -> np.ndarray:
    """A clip-art PNG cropped to its opaque pixels, longer side at most MAX_SIDE: uint8 [H, W, 4]."""
    with Image.open(path) as im:
        im = im.convert("RGBA")
    box = im.getchannel("A").point(lambda a: 255 if a >= 16 else 0).getbbox()
    if box is None:
        raise ValueError(f"{path} has no opaque pixels")
    im = im.crop(box)
    if max(im.size) > MAX_SIDE:
        s = MAX_SIDE / max(im.size)
        size = (max(1, round(im.width * s)), max(1, round(im.height * s)))
        # Resize premultiplied so transparent pixels' colours do not bleed into the edges.
        im = Image.fromarray(premultiply(np.asarray(im)), "RGBa").resize(size, Image.Resampling.LANCZOS)
        im = im.convert("RGBA")
    return np.asarray(im)


def load_sprites() -> list[Sprite]:
    """Load every picture of CLIPART (about 2 seconds)."""
    r = root()
    if r is None:
        raise SystemExit("openclipart-png is not installed: apt-get install -y openclipart-png")
    sprites = []
    for rel, name, kind in CLIPART:
        rgba = load_png(r / rel)
        sprites.append(Sprite(name, kind, f"clipart:{rel}", rgba))
    return sprites


if __name__ == "__main__":
    import text2img

    text2img.main(default_sources="clipart", prog="clipart.py")
