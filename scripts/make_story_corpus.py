"""Generate a seeded corpus of children's stories, and short conversations about them, for training dgemma-tiny.

Each record is one JSON line: {"prompt": str, "story": str}, the opening request and the story told for it, and
for some records
    "system": str            a system prompt;
    "turns": [{"user", "model"}, ...]   one to three later exchanges: follow-up requests ("Now one about a bear.",
                             "Another one, please.", "Make it about a robot instead.") answered with a new story, and
                             questions about the story just told (its hero's name, home, friend, wish or ending),
                             answered from that story;
    "thoughts": [str, ...]   one short plan per model answer: the conversation is rendered with thinking on.
About 70% of opening prompts ask for a subject (one of a few hundred heroes, a place, the weather or a plot), and the
story's hero is what was asked for; the rest are empty, for a generic request the trainer fills in. Phrasings and
subjects named HELD_OUT_* never occur: scripts/eval_tiny.py asks with them. Every template and word list here was
written for this project.

    python scripts/make_story_corpus.py --out work_tiny/stories.jsonl --count 60000 --seed 0
"""

import argparse
import json
import random
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

CHAT_FRACTION = 0.7  # opening prompts that name a subject
CONVERSATION_FRACTION = 0.4  # records that go on after the first story
MAX_EXCHANGES = 4  # user turns in a conversation, the first included
THINK_FRACTION = 0.2  # records rendered with thinking on
SYSTEM_FRACTION = 0.2  # records with a system prompt
MIN_WORDS, MAX_WORDS = 60, 160
MIN_SENTENCES, MAX_SENTENCES = 4, 9


class Pronoun(NamedTuple):
    subj: str
    obj: str
    poss: str
    refl: str
    was: str  # the only verb whose past tense agrees with its subject


SHE = Pronoun("she", "her", "her", "herself", "was")
HE = Pronoun("he", "him", "his", "himself", "was")
IT = Pronoun("it", "it", "its", "itself", "was")
THEY = Pronoun("they", "them", "their", "themselves", "were")


@dataclass(frozen=True)
class Kind:
    noun: str
    category: str  # "person", "animal" or "object": names, pronouns and the fallback word lists
    group: str  # keys HOMES, and LIKES, SKILLS and LOST_ITEMS where it has its own
    moves: tuple[str, ...]  # past-tense ways of getting somewhere
    realm: str = "land"  # picks the places, friends and shelters that make sense for it
    hands: bool = True  # can make and plant things
    pronoun: Pronoun | None = None  # fixed by the noun (a queen); None: drawn


def _kinds(
    nouns: str,
    category: str,
    group: str,
    moves: str,
    realm: str = "land",
    hands: bool = True,
    pronoun: Pronoun | None = None,
) -> tuple[Kind, ...]:
    """One Kind per comma-separated noun, the rest shared (a few hundred nouns stay readable this way)."""
    return tuple(
        Kind(noun.strip(), category, group, tuple(moves.split(", ")), realm, hands, pronoun)
        for noun in nouns.split(",")
    )


GIRL_NAMES = (
    "Mia",
    "Lily",
    "Emma",
    "Ava",
    "Zoe",
    "Ruby",
    "Lucy",
    "Nora",
    "Ella",
    "Maya",
    "Sara",
    "Anna",
    "Grace",
    "Hannah",
    "Ivy",
    "Rosa",
    "Amara",
    "Priya",
    "Leila",
    "Yuki",
    "Chloe",
    "Isla",
    "Freya",
    "Alice",
    "Nina",
    "Hana",
    "Mei",
    "Aisha",
    "Lena",
    "Clara",
    "Tara",
    "Eva",
    "Jade",
    "Molly",
    "Poppy",
    "Daisy",
    "Fatima",
    "Sofia",
    "Amelia",
    "Olive",
)
BOY_NAMES = (
    "Leo",
    "Sam",
    "Max",
    "Ben",
    "Tom",
    "Noah",
    "Jack",
    "Omar",
    "Ravi",
    "Finn",
    "Oscar",
    "Theo",
    "Kai",
    "Luca",
    "Milo",
    "Eli",
    "Hugo",
    "Adam",
    "Jonah",
    "Arlo",
    "Ethan",
    "Ari",
    "Dev",
    "Kofi",
    "Mateo",
    "Yusuf",
    "Felix",
    "Rory",
    "Toby",
    "Jamal",
    "Hiro",
    "Liam",
    "Oliver",
    "Sami",
    "Pablo",
    "Ezra",
    "Joe",
    "Ollie",
    "Ned",
    "Tariq",
)
# Names for animals and things.
CRITTER_NAMES = (
    "Pip",
    "Biscuit",
    "Pepper",
    "Button",
    "Bramble",
    "Clover",
    "Hazel",
    "Maple",
    "Pebble",
    "Sunny",
    "Twig",
    "Rusty",
    "Bubbles",
    "Flash",
    "Zippy",
    "Bolt",
    "Sparky",
    "Toot",
    "Puff",
    "Coco",
    "Mango",
    "Peanut",
    "Noodle",
    "Jelly",
    "Fern",
    "Willow",
    "Bean",
    "Dot",
    "Ziggy",
    "Patch",
    "Whiskers",
    "Nibbles",
    "Moss",
    "Acorn",
    "Sprout",
    "Chip",
    "Gizmo",
    "Tilly",
    "Skye",
    "Breeze",
    "Comet",
    "Splash",
    "Wiggles",
    "Honey",
    "Juniper",
    "Marble",
    "Poppet",
    "Scout",
    "Tumble",
    "Waffle",
    "Otto",
    "Rolo",
    "Pumpkin",
    "Nutmeg",
    "Socks",
    "Fizz",
    "Bobby",
    "Luna",
    "Ginger",
    "Domino",
)
COLOURS = (
    "red",
    "blue",
    "green",
    "yellow",
    "orange",
    "purple",
    "pink",
    "white",
    "silver",
    "golden",
    "brown",
    "black",
    "grey",
)
TRAITS = (
    "brave",
    "kind",
    "shy",
    "clever",
    "curious",
    "cheerful",
    "gentle",
    "friendly",
    "careful",
    "playful",
    "helpful",
    "quiet",
    "busy",
    "happy",
    "proud",
    "bold",
    "clumsy",
    "silly",
    "sleepy",
    "young",
    "grumpy",
    "jolly",
    "patient",
    "lively",
)
ANIMAL_LOOKS = ("fluffy", "furry", "spotty", "tiny", "small", "speedy", "chubby", "stripy", "little", "old")
OBJECT_LOOKS = (*COLOURS, "shiny", "rusty", "tiny", "old", "new", "speedy", "noisy", "wobbly", "bright")
LOOKS = {"animal": ANIMAL_LOOKS, "object": OBJECT_LOOKS, "sky_thing": ("little", "tiny", "bright", "fluffy", "small")}


def _list(text: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in text.split(","))


# Where a hero lives, by Kind.group: every group has its own.
HOMES = {
    "person": (
        "in a cosy cottage",
        "in a small house by the woods",
        "in a quiet village",
        "on a busy farm",
        "in a flat above a bakery",
        "in a little town by the sea",
        "in a yellow house on a hill",
    ),
    "royal": _list("in a big castle, in a palace on a hill, in a castle by the lake, in a tall white tower"),
    "magic": _list("in a tall tower, in a little cottage in the woods, in a magic forest, in a castle in the clouds"),
    "sea_person": _list("in a little house by the harbour, on a big ship, in a lighthouse, on a sunny island"),
    "space_person": _list("in a space station, on a little planet, near the rocket base"),
    "forest": (
        "in a deep forest",
        "in a green meadow",
        "by a quiet pond",
        "on a busy farm",
        "in a big garden",
        "near an old barn",
        "at the edge of the woods",
        "under an old oak tree",
    ),
    "farm": _list("on a busy farm, in a big red barn, in a field by the farmhouse, near an old barn"),
    "pet": _list("in a cosy house, with a kind family, in a little flat in town, in a house with a big garden"),
    "wild": _list("in the jungle, on the wide grassland, by a muddy river, near a big waterfall, in a busy zoo"),
    "polar": _list("in the snowy north, on a big iceberg, by the frozen sea, in a land of ice and snow"),
    "bird": _list("in a nest in a tall tree, on a church roof, in a garden hedge, at the top of an old oak tree"),
    "sea": _list("in the deep blue sea, near a coral reef, by a rocky shore, in a quiet bay"),
    "pond": _list("by a quiet pond, in a little river, in a lake by the woods, among the tall reeds"),
    "bug": _list("under a big leaf, in a flower garden, in a pile of leaves, in a sunny meadow"),
    "fantasy": _list("in a misty mountain cave, in a magic forest, beyond the rainbow, in a valley far away"),
    "dinosaur": _list("in a steamy jungle, by a smoking volcano, in a valley of giant ferns"),
    "road": _list("in a big garage, in a busy town, at the end of a long road, in a little town by the sea"),
    "farm_vehicle": _list("on a busy farm, in a big red barn, at the edge of a wheat field"),
    "rail": _list("at a little station, in a big engine shed, in a valley between the hills"),
    "boat": _list("in a busy harbour, on a quiet lake, by a sleepy fishing village"),
    "aircraft": _list("at a small airport, in a big hangar, on a grassy airfield"),
    "balloon": _list("in a field by the hills, at a travelling fair, in a barn by the river"),
    "kite": _list("in a cupboard under the stairs, in a toy shop, with a family by the sea"),
    "rocket": _list("at a rocket base, on a launch pad by the sea, in a big hangar"),
    "robot": _list("in a busy workshop, in a big city, in a toy shop, in a house full of gadgets"),
    "toy": _list("in a toy shop, in a child's bedroom, in a toy box, on a shelf full of toys"),
    "sky_thing": _list("high up in the sky, above a sleepy town, over the hills, above the sea"),
    "snow": _list("in a snowy garden, on a snowy hill, in a park full of snow"),
}
# What a hero loves doing, by group, else by category.
LIKES = {
    "person": (
        "reading books",
        "playing outside",
        "drawing pictures",
        "singing songs",
        "building things",
        "looking at the stars",
        "making new friends",
    ),
    "royal": _list("having tea parties, riding horses, dancing at the ball, reading old stories"),
    "magic": _list("making magic, mixing potions, reading spell books, flying at night"),
    "sea_person": _list("sailing on the sea, looking for treasure, fishing, singing sea songs"),
    "space_person": _list("looking at the stars, flying rockets, visiting the moon"),
    "animal": (
        "playing in the sun",
        "exploring",
        "chasing butterflies",
        "napping in the grass",
        "telling jokes",
        "splashing in puddles",
        "eating berries",
    ),
    "bird": _list("singing in the morning, flying over the trees, building nests, playing in the wind"),
    "sea": _list("swimming in the sun, blowing bubbles, splashing in the waves, playing hide and seek"),
    "pond": _list("swimming in the sun, blowing bubbles, splashing in the water, playing hide and seek"),
    "bug": _list("visiting flowers, sitting in the sun, exploring the garden, playing in the grass"),
    "road": _list("driving through town, helping people, beeping its horn, going on long trips"),
    "farm_vehicle": _list("working in the fields, pulling the hay cart, driving through puddles"),
    "rail": _list("carrying people to town, puffing through the hills, blowing its whistle"),
    "boat": _list("sailing in the sunshine, bobbing on the waves, carrying people across the bay"),
    "aircraft": _list("flying through the clouds, zooming over the sea, carrying letters"),
    "balloon": _list("floating high in the sky, looking at the world below, drifting in the breeze"),
    "kite": _list("dancing in the wind, flying over the hills, chasing the clouds"),
    "rocket": _list("zooming to the stars, counting planets, flying very fast"),
    "robot": _list("fixing things, counting stars, helping people, playing chess"),
    "toy": _list("playing games, going to tea parties, listening to stories, being hugged"),
    "sky_thing": _list("floating in the sky, watching the world below, dancing in the wind"),
    "snow": _list("cold winter days, playing in the snow, watching the snowflakes"),
}
# What a hero can learn (the "learning to ..." plot), by group, else by category.
SKILLS = {
    "person": (
        "ride a bike",
        "swim",
        "whistle",
        "bake bread",
        "paint",
        "play the drum",
        "read",
        "juggle",
        "skip with a rope",
        "climb trees",
        "dance",
        "sing",
        "play the flute",
        "knit a scarf",
        "fly a kite",
        "count to one hundred",
        "ride a horse",
        "skate",
        "do a cartwheel",
        "build a treehouse",
    ),
    "magic": _list("do magic tricks, make a potion, fly on a broom, make it snow"),
    "sea_person": _list("swim, sail a boat, tie knots, catch a fish"),
    "space_person": _list("fly a rocket, float in space, land on the moon"),
    "animal": (
        "swim",
        "climb trees",
        "jump over the stream",
        "dance",
        "sing",
        "whistle",
        "juggle",
        "skate on the ice",
        "read",
        "paint",
        "dig a tunnel",
        "catch falling leaves",
        "stand on one leg",
        "build a nest",
    ),
    "bird": _list("fly very high, sing a new song, build a nest, fly upside down"),
    "sea": _list("swim very fast, blow big bubbles, jump over the waves, dive to the bottom"),
    "pond": _list("swim very fast, blow big bubbles, jump over the reeds, dive to the bottom"),
    "bug": _list("climb a tall flower, dance, sing, build a little house"),
    "road": _list("drive up the steep hill, drive very fast, park in a tiny space, drive in the snow"),
    "farm_vehicle": _list("plough the field, pull the heavy cart, drive through the mud, drive backwards"),
    "rail": _list("climb the steep hill, pull heavy wagons, whistle a tune, go through the long tunnel"),
    "boat": _list("sail through big waves, sail in the dark, steer around the rocks, sail very fast"),
    "aircraft": _list("fly through the clouds, land on a tiny island, loop the loop, fly at night"),
    "balloon": _list("float over the mountains, land softly, rise above the clouds"),
    "kite": _list("fly very high, dance in the wind, loop the loop, fly in a gentle breeze"),
    "rocket": _list("fly to the moon, land softly, fly very fast"),
    "robot": _list("dance, bake a cake, play the piano, paint, juggle, tell jokes, ride a bike"),
    "toy": _list("dance, sing, jump, tell jokes, ride a bike"),
    "sky_thing": _list("float very high, make a rainbow, dance in the wind, shine very bright"),
    "snow": _list("dance, sing, ride a sled"),
}

# The heroes a request can ask for: a few hundred nouns. (The realm decides where they go and whom they meet.)
PEOPLE = (
    *_kinds("girl", "person", "person", "walked, ran, skipped", pronoun=SHE),
    *_kinds("boy", "person", "person", "walked, ran", pronoun=HE),
    *_kinds(
        "baker, farmer, doctor, nurse, teacher, firefighter, police officer, vet, chef, painter, gardener, builder, "
        "librarian, zookeeper, scientist, inventor, dancer, singer, clown, detective, explorer, shepherd, "
        "mail carrier, bus driver",
        "person",
        "person",
        "walked, ran",
    ),
    *_kinds("grandma, aunt", "person", "person", "walked", pronoun=SHE),
    *_kinds("grandpa, uncle, cowboy", "person", "person", "walked", pronoun=HE),
    *_kinds("superhero, ninja", "person", "person", "ran, jumped"),
    *_kinds("king, prince", "person", "royal", "walked, rode", pronoun=HE),
    *_kinds("queen, princess", "person", "royal", "walked, rode", pronoun=SHE),
    *_kinds("knight", "person", "royal", "rode, marched"),
    *_kinds("wizard", "person", "magic", "walked, flew", pronoun=HE),
    *_kinds("witch", "person", "magic", "flew, walked", pronoun=SHE),
    *_kinds("fairy", "person", "magic", "flew, fluttered", "sky"),
    *_kinds("elf, magician", "person", "magic", "walked, ran"),
    *_kinds("giant", "person", "magic", "stomped, walked"),
    *_kinds("mermaid", "person", "sea_person", "swam", "water", pronoun=SHE),
    *_kinds("pirate, sailor", "person", "sea_person", "sailed, swam", "water"),
    *_kinds("astronaut", "person", "space_person", "flew, floated", "space"),
)
PETS = ("dog", "cat", "puppy", "kitten", "pony", "rabbit", "hamster", "parrot")
ANIMALS = (
    *_kinds("fox, wolf, raccoon, skunk", "animal", "forest", "trotted, ran"),
    *_kinds("deer, moose", "animal", "forest", "ran, walked"),
    *_kinds("rabbit, bunny, hare", "animal", "forest", "hopped"),
    *_kinds("bear, brown bear", "animal", "forest", "padded, walked"),
    *_kinds("mouse, squirrel, chipmunk, dormouse", "animal", "forest", "scampered, ran"),
    *_kinds("hedgehog, badger, mole, porcupine", "animal", "forest", "shuffled, walked"),
    *_kinds("owl, robin, sparrow, eagle, crow, woodpecker, bluebird, blackbird, wren", "animal", "bird", "flew", "sky"),
    *_kinds("seagull, stork, pigeon, bat, hummingbird, pelican, puffin", "animal", "bird", "flew", "sky"),
    *_kinds("duck, duckling, goose, swan", "animal", "pond", "waddled, swam", "water"),
    *_kinds("frog, toad", "animal", "pond", "hopped, swam", "water"),
    *_kinds("otter, beaver, goldfish", "animal", "pond", "swam", "water"),
    *_kinds("crocodile, alligator, turtle", "animal", "pond", "crawled, swam", "water"),
    *_kinds("fish, whale, dolphin, shark, octopus, seahorse, jellyfish, starfish", "animal", "sea", "swam", "water"),
    *_kinds("seal, walrus", "animal", "sea", "swam", "water"),
    *_kinds("crab, lobster", "animal", "sea", "scuttled, swam", "water"),
    *_kinds("penguin", "animal", "polar", "waddled, swam", "water"),
    *_kinds("polar bear", "animal", "polar", "padded, swam"),
    *_kinds("reindeer, husky", "animal", "polar", "trotted, ran"),
    *_kinds("elephant, rhino, hippo", "animal", "wild", "stomped, walked"),
    *_kinds("lion, tiger, leopard, cheetah, jaguar", "animal", "wild", "padded, ran"),
    *_kinds("giraffe, zebra, camel, ostrich", "animal", "wild", "walked, ran"),
    *_kinds("monkey, gorilla, chimpanzee, orangutan", "animal", "wild", "swung, ran"),
    *_kinds("panda, koala, sloth", "animal", "wild", "climbed, walked"),
    *_kinds("kangaroo", "animal", "wild", "hopped, bounced"),
    *_kinds("snake", "animal", "wild", "slithered"),
    *_kinds("lizard, chameleon, gecko", "animal", "wild", "scurried, ran"),
    *_kinds("flamingo, peacock, parrot", "animal", "bird", "flew, walked", "sky"),
    *_kinds("pig, piglet, goat, sheep, lamb, cow, calf, donkey, llama", "animal", "farm", "trotted, walked"),
    *_kinds("horse, pony", "animal", "farm", "galloped, trotted"),
    *_kinds("chicken, hen, chick, rooster, turkey", "animal", "farm", "strutted, ran"),
    *_kinds("dog, puppy", "animal", "pet", "trotted, bounded, ran"),
    *_kinds("cat, kitten", "animal", "pet", "padded, ran"),
    *_kinds("hamster, guinea pig, ferret", "animal", "pet", "scampered, ran"),
    *_kinds("tortoise", "animal", "pet", "crawled, plodded"),
    *_kinds("bee, bumblebee, butterfly, ladybird, ladybug, dragonfly, firefly, moth", "animal", "bug", "flew", "sky"),
    *_kinds("ant, caterpillar, snail, spider, worm, beetle", "animal", "bug", "crawled"),
    *_kinds("grasshopper, cricket", "animal", "bug", "hopped"),
    *_kinds("dragon", "animal", "fantasy", "flew", "sky"),
    *_kinds("unicorn", "animal", "fantasy", "galloped, trotted"),
    *_kinds("monster, troll, yeti", "animal", "fantasy", "stomped, walked"),
    *_kinds("ghost", "animal", "fantasy", "floated, drifted"),
    *_kinds("alien", "animal", "space_person", "floated, zoomed", "space"),
    *_kinds("dinosaur, triceratops, stegosaurus, diplodocus", "animal", "dinosaur", "stomped, walked"),
)
OBJECTS = (
    *_kinds(
        "car, bus, truck, lorry, fire engine, police car, ambulance, taxi, van, jeep, ice cream van, race car",
        "object",
        "road",
        "drove, rolled",
        hands=False,
    ),
    *_kinds(
        "digger, bulldozer, dump truck, garbage truck, monster truck, cement mixer",
        "object",
        "road",
        "rumbled, drove",
        hands=False,
    ),
    *_kinds("motorbike, scooter, bike, skateboard", "object", "road", "zoomed, rolled", hands=False),
    *_kinds("tractor, combine harvester", "object", "farm_vehicle", "rumbled, drove", hands=False),
    *_kinds("train, steam train, steam engine", "object", "rail", "chugged, puffed", hands=False),
    *_kinds("tram", "object", "rail", "rattled, rolled", hands=False),
    *_kinds(
        "boat, ship, sailboat, tugboat, ferry, canoe, raft, yacht, pirate ship, fishing boat",
        "object",
        "boat",
        "sailed",
        "water",
        hands=False,
    ),
    *_kinds("submarine", "object", "boat", "dived, sailed", "water", hands=False),
    *_kinds("plane, jet, glider, helicopter, seaplane", "object", "aircraft", "flew, zoomed", "sky", hands=False),
    *_kinds("balloon, hot air balloon, airship", "object", "balloon", "floated, drifted", "sky", hands=False),
    *_kinds("kite, paper plane", "object", "kite", "flew", "sky", hands=False),
    *_kinds("rocket, spaceship, flying saucer", "object", "rocket", "flew, zoomed", "space", hands=False),
    *_kinds("robot", "object", "robot", "rolled, clanked"),
    *_kinds("teddy bear, doll, rag doll, toy soldier, puppet, toy robot", "object", "toy", "walked, tiptoed"),
    *_kinds("ball, beach ball, spinning top, toy car, marble", "object", "toy", "rolled, bounced", hands=False),
    *_kinds("rocking horse", "object", "toy", "rocked, trotted", hands=False),
    *_kinds(
        "cloud, raindrop, snowflake, star, rainbow, leaf, sunbeam",
        "object",
        "sky_thing",
        "floated, drifted",
        "sky",
        hands=False,
    ),
    *_kinds("snowman", "object", "snow", "waddled, slid"),
)
HEROES = (*PEOPLE, *ANIMALS, *OBJECTS)
# Never in the corpus: eval_tiny.py asks for them to see whether the model can take a subject it never met.
HELD_OUT_KINDS = (
    *_kinds("wombat, armadillo, meerkat", "animal", "wild", "walked, ran"),
    *_kinds("narwhal, platypus", "animal", "sea", "swam", "water"),
    *_kinds("toucan", "animal", "bird", "flew", "sky"),
)

DESTINATIONS = {
    "land": (
        "the park",
        "the forest",
        "the garden",
        "the village square",
        "the farm",
        "the market",
        "the old mill",
        "the library",
        "the bakery",
        "the meadow",
        "the hill",
        "the playground",
        "the orchard",
        "the river bank",
        "the school",
        "the old bridge",
        "the pond",
        "the woods",
        "the beach",
        "the station",
    ),
    "water": (
        "the harbour",
        "the lighthouse",
        "the island",
        "the bay",
        "the river",
        "the lake",
        "the old pier",
        "the reeds",
        "the beach",
        "the old bridge",
        "the cove",
        "the rocks",
    ),
    "sky": (
        "the hill",
        "the meadow",
        "the beach",
        "the tall trees",
        "the old tower",
        "the castle",
        "the rooftops",
        "the windmill",
        "the mountains",
        "the fields",
    ),
    "space": _list(
        "the moon, the space station, the red planet, the big crater, the comet, the little planet next door"
    ),
}
FAR_PLACES = {
    "land": (
        "the big city",
        "the tall mountains",
        "the sea",
        "the castle on the hill",
        "the great waterfall",
        "the snowy north",
        "the desert",
        "the jungle",
    ),
    "water": (
        "the faraway island",
        "the great lighthouse",
        "the open sea",
        "the end of the river",
        "the warm southern sea",
    ),
    "sky": (
        "the top of the tallest mountain",
        "the edge of the sea",
        "the land beyond the clouds",
        "the great waterfall",
        "the snowy peaks",
    ),
    "space": _list(
        "the edge of the galaxy, a faraway planet, the biggest star in the sky, the rings of a giant planet"
    ),
}
SIGHTS = {
    "land": (
        "a field of sunflowers",
        "a busy town",
        "a deep, dark forest",
        "a sparkling river",
        "an old stone bridge",
        "a flock of sheep",
        "a windmill",
        "a herd of cows",
        "a hill covered in flowers",
    ),
    "water": (
        "a sleepy village",
        "a family of ducks",
        "tall green reeds",
        "a big grey whale",
        "a row of little houses",
        "a sandy beach",
        "some fishing boats",
        "a jumping fish",
    ),
    "sky": (
        "fluffy white clouds",
        "a flock of geese",
        "tiny houses far below",
        "green fields",
        "a winding river",
        "a tall church tower",
        "a sparkling lake",
    ),
    "space": _list(
        "a shooting star, a blue planet, a silver comet, a ringed planet, a cloud of stardust, a sleepy moon"
    ),
}
SHELTERS = {
    "land": ("an old barn", "a cosy cave", "a hollow tree", "a little shed", "a big tent"),
    "water": ("a quiet harbour", "a sheltered cove", "the boathouse", "a cave by the shore"),
    "sky": ("an old barn", "a garden shed", "a hollow tree", "a church tower"),
    "space": _list("the space station, a big crater, a moon cave"),
}
FRIENDS = {
    "land": (
        "rabbit",
        "mouse",
        "hedgehog",
        "squirrel",
        "fox",
        "deer",
        "badger",
        "mole",
        "pony",
        "lamb",
        "goat",
        "puppy",
        "kitten",
        "bear",
        "tortoise",
    ),
    "water": ("duck", "frog", "otter", "seal", "turtle", "swan", "crab", "fish", "dolphin", "whale"),
    "sky": ("owl", "robin", "sparrow", "butterfly", "bee", "goose", "crow", "ladybird", "seagull"),
    "space": _list("alien, robot, space dog, moon mouse"),
}
LOST_ITEMS = {
    "person": (
        "ball",
        "hat",
        "scarf",
        "book",
        "key",
        "shell",
        "teddy bear",
        "mitten",
        "marble",
        "crayon",
        "whistle",
        "boot",
        "umbrella",
        "lunchbox",
        "necklace",
        "toy boat",
        "drum",
        "map",
        "compass",
        "blanket",
    ),
    "animal": (
        "ball",
        "hat",
        "scarf",
        "acorn",
        "shell",
        "feather",
        "bell",
        "marble",
        "ribbon",
        "blanket",
        "pebble",
        "cup",
        "toy mouse",
    ),
    "road": _list("horn, wheel, lamp, mirror, flag"),
    "farm_vehicle": _list("wheel, trailer, horn"),
    "rail": _list("whistle, bell, lamp, carriage"),
    "boat": _list("flag, bell, anchor, sail, lantern"),
    "aircraft": _list("propeller, flag, lamp"),
    "balloon": _list("basket, rope, flag"),
    "kite": _list("ribbon, tail, bow"),
    "rocket": _list("antenna, flag, lamp, map"),
    "robot": _list("bolt, battery, spring, screwdriver, wheel"),
    "toy": _list("button, ribbon, bow, hat, scarf, bell"),
    "sky_thing": _list("scarf, hat, ribbon, bell"),
    "snow": _list("scarf, hat, mitten, button"),
}
SPOTS = (
    "under a pile of leaves",
    "behind a big rock",
    "in a patch of tall grass",
    "in a clump of reeds",
    "under an old bench",
    "inside a hollow log",
    "on a sandy bank",
    "in a bird's nest",
    "next to a sleeping cat",
    "at the bottom of a puddle",
)
ACTIVITIES = (
    "played hide and seek",
    "told funny stories",
    "sang silly songs",
    "watched the clouds go by",
    "looked for shiny pebbles",
    "raced each other",
    "played tag",
    "counted the birds",
    "made up a dance",
)
FOODS = (
    "apples",
    "berries",
    "sandwiches",
    "cheese",
    "carrots",
    "biscuits",
    "honey cakes",
    "plums",
    "nuts",
    "pancakes",
    "muffins",
    "pears",
    "cherries",
    "warm bread",
    "soup",
    "oat cookies",
)
CAKES = ("chocolate", "strawberry", "lemon", "banana", "carrot", "honey", "vanilla", "raspberry")
JUDGES = ("wise old owl", "mayor", "big brown bear", "old turtle", "teacher", "tall giraffe", "farmer")
GIFT_THINGS = (
    "shiny shells",
    "pretty flowers",
    "soft feathers",
    "smooth pebbles",
    "colourful leaves",
    "pine cones",
    "bright buttons",
    "bits of ribbon",
    "acorns and conkers",
)
CRAFTS = (
    "a necklace",
    "a flower crown",
    "a painting",
    "a little card with a heart on it",
    "a bracelet",
    "a tiny wooden box",
    "a picture frame",
    "a wind chime",
    "a funny hat",
)
TREASURES = (
    "shiny gold coins",
    "sparkling jewels",
    "old letters and a silver key",
    "seeds for a magic garden",
    "a hundred colourful marbles",
    "a golden crown",
    "a music box that played a sweet tune",
)
SCENERY = {  # all plural, to follow "there were"
    "land": (
        "tall pine trees",
        "blackberry bushes",
        "babbling brooks",
        "old stone walls",
        "fields of wheat",
        "yellow buttercups",
        "cherry trees",
        "mossy rocks",
        "wooden fences",
        "wild strawberries",
        "little waterfalls",
        "rolling hills",
    ),
    "water": (
        "sandy beaches",
        "rock pools full of crabs",
        "bobbing fishing boats",
        "white seagulls",
        "tall green reeds",
        "little wooden jetties",
        "smooth grey pebbles",
        "sleepy harbour towns",
    ),
    "sky": (
        "windy hills",
        "fluffy clouds",
        "tall poplar trees",
        "fields of poppies",
        "crooked windmills",
        "flocks of swallows",
        "red rooftops",
        "shining rivers",
    ),
    "space": _list("twinkling stars, sleepy planets, glowing comets, silver moons, shooting stars"),
}
HAPPY = ("happy", "glad", "proud", "cheerful", "joyful", "delighted", "thrilled")
SAD = ("sad", "upset", "gloomy", "unhappy", "worried", "miserable")
SCARED = ("scared", "nervous", "frightened", "afraid", "uneasy")
DAY_WORDS = (
    "sunny",
    "rainy",
    "windy",
    "bright",
    "quiet",
    "warm",
    "chilly",
    "foggy",
    "breezy",
    "cloudy",
    "golden",
    "frosty",
    "misty",
)
TIMES = ("morning", "afternoon", "evening", "day")
PLAIN_WHENS = (
    "One day",
    "One afternoon",
    "Late one evening",
    "Early one morning",
    "One summer",
    "One autumn day",
    "One spring morning",
)
UNTILS = (
    "until the sun went down",
    "until the stars came out",
    "until it was time for supper",
    "all afternoon",
    "until the moon rose",
    "until it got dark",
)

INTROS = (
    "Once upon a time, {intro} lived {home}.",
    "{Intro} lived {home}.",
    "Long ago, {intro} lived {home}.",
    "In a faraway land, {intro} lived {home}.",
    "Once upon a time, {intro} lived {home} and loved {like}.",
)
# Optional second sentence: a trait or a view, so openings do not all look alike.
DETAILS = (
    "{He} {was} {trait} and loved {like}.",
    "More than anything, {N} loved {like}.",
    "{N} {was} very {trait}, and everyone knew it.",
    "All around {his} home were {scenery} and {scenery2}.",
    "Near {his} home, there were {scenery} and {scenery2}.",
    "",
    "",
    "",
)
ENDINGS = (
    "",
    "",
    "",
    "",
    "That night, {N} fell asleep with a smile.",
    "It had been a wonderful day.",
    "{N} would always remember that day.",
)

# Requests a user might make; "{}" is the subject (a character or a topic).
REQUESTS = (
    "Tell me a story about {}.",
    "Write a short story about {}.",
    "Can you tell me a story about {}?",
    "Please write a story about {}.",
    "I would like a story about {}.",
    "Could you write a bedtime story about {}?",
    "Tell me a bedtime story about {}.",
    "Write a story for a child about {}.",
    "Make up a story about {}.",
    "Can you write a little story about {}?",
    "Tell a story about {}, please.",
    "I want to hear a story about {}.",
    "Write me a happy story about {}.",
)

# Asked only by scripts/eval_tiny.py: phrasings the corpus never uses.
HELD_OUT_REQUESTS = (
    "Could I have a story about {}?",
    "Please tell me a story about {}.",
    "Tell me a tale about {}.",
    "I'd love to hear a story about {}.",
)

# Follow-up requests: "new" and "instead" name a subject ("{}"), "another" asks for one more of the same.
FOLLOW_UPS = {
    "new": (
        "Now one about {}.",
        "Now tell me one about {}.",
        "Can you tell me one about {}?",
        "What about {}?",
        "And now a story about {}.",
        "Next, one about {}, please.",
    ),
    "another": (
        "Another one, please.",
        "Tell me another one.",
        "One more story, please.",
        "Can I have another one?",
        "Another story, please!",
    ),
    "instead": (
        "Make it about {} instead.",
        "Can you make it about {} instead?",
        "Tell the same story about {} instead.",
    ),
}
HELD_OUT_FOLLOW_UPS = {
    "new": ("How about one about {} now?", "Now a story about {}, please."),
    "another": ("One more, please.", "Tell me one more."),
    "instead": ("Could it be about {} instead?",),
}

# Questions about the story just told, each with its answers; the fields are the story's own (`Story.facts`).
QUESTIONS = {
    "name": (
        ("What was the {noun}'s name?", ("The {noun}'s name was {call}.", "{call}. That was the {noun}'s name.")),
        ("What was the name of the {noun}?", ("The {noun} was called {call}.", "The name of the {noun} was {call}.")),
        ("What was the {noun} called?", ("The {noun} was called {call}.", "It was called {call}.")),
        ("What is the {noun}'s name?", ("The {noun}'s name is {call}.",)),
        ("What was the hero's name?", ("The hero's name was {call}.", "The hero was called {call}.")),
        ("Who was the story about?", ("The story was about {intro}.", "It was about {intro}.")),
    ),
    "home": (
        ("Where did the {noun} live?", ("The {noun} lived {home}.", "{N} lived {home}.")),
        ("Where did {N} live?", ("{N} lived {home}.",)),
        ("Where was {N}'s home?", ("{N}'s home was {home}.",)),
    ),
    "friend": (
        ("Who did the {noun} meet?", ("The {noun} met {friend}.", "{N} met {friend}.")),
        ("Who did {N} meet?", ("{N} met {friend}.",)),
        ("Who was {N}'s friend in the story?", ("{N}'s friend was {friend}.",)),
    ),
    "want": (
        ("What did the {noun} want?", ("{want}",)),
        ("What did {N} want?", ("{want}",)),
        ("What did {N} wish for?", ("{want}",)),
    ),
    "end": (
        ("What happened at the end?", ("In the end, {ending}",)),
        ("How did the story end?", ("At the end of the story, {ending}",)),
        ("How did it end?", ("In the end, {ending}",)),
    ),
}
QUESTION_WEIGHTS = {"name": 0.35, "home": 0.15, "friend": 0.15, "want": 0.15, "end": 0.2}
HELD_OUT_NAME_QUESTIONS = (
    "Can you remind me what the {noun} was called?",
    "Tell me the {noun}'s name again.",
    "What name did the {noun} have?",
)
SYSTEM_PROMPTS = (
    "You are a friendly storyteller for young children.",
    "You tell short, gentle stories for children.",
    "You are a kind helper who tells bedtime stories.",
    "Keep your stories short and happy.",
    "You are a helpful assistant.",
    "Answer questions about your stories in one sentence.",
)

# Short plans for the thought channel, one or two sentences, from the facts the generator chose.
STORY_THOUGHTS = {
    "hero": (
        "The user wants a story about {subject}. I will call the {noun} {call} and let {him} meet {a_fnoun}.",
        "The user asked for a story about {subject}. It will be about {topic}, and the {noun} will be called {call}.",
    ),
    "topic": (
        "The user wants a story about {subject}. My hero will be {intro}.",
        "The user asked for a story about {subject}. I will tell it with {intro} as the hero.",
    ),
    "generic": (
        "The user did not say what the story should be about. I will tell one about {topic}, with {intro} as the hero.",
    ),
    "new": (
        "The user now wants a story about {subject}. I will call the {noun} {call} and tell a story about {topic}.",
    ),
    "another": (
        "The user wants another story about {a_noun}. This time the {noun} will be called {call}, and the story will "
        "be about {topic}.",
    ),
    "another_any": ("The user wants another story. This one will be about {topic}, with {intro} as the hero.",),
    "instead": ("The user wants the same story about {topic}, but with {subject}. I will call the {noun} {call}.",),
}
QUESTION_THOUGHTS = {
    "name": "The user asks for the name of the {noun} in my story. It was {call}.",
    "home": "The user asks where {N} lived. In my story, {N} lived {home}.",
    "friend": "The user asks whom {N} met. In my story, it was {friend}.",
    "want": "The user asks what {N} wanted. I will answer from the start of my story.",
    "end": "The user asks how my story ended. I will tell the last part again.",
}

# Places a "trip to ..." story can visit, by realm: (place, what the hero saw there, what they did there).
PLACES = {
    "land": (
        ("the beach", "shells, crabs and big sandcastles", "built a sandcastle and paddled in the sea"),
        ("the zoo", "lions, monkeys and a tall giraffe", "watched the penguins have their lunch"),
        ("the farm", "cows, pigs and fluffy sheep", "fed the hens and collected the eggs"),
        ("the park", "swings, slides and a duck pond", "played on the swings"),
        ("the circus", "clowns, jugglers and a big red tent", "watched the acrobats fly through the air"),
        ("the funfair", "a big wheel and bright lights", "rode on the merry-go-round"),
        ("the castle", "tall towers and a big wooden gate", "explored the old towers"),
        ("the jungle", "tall trees, bright flowers and noisy parrots", "swung on the long green vines"),
        ("the mountains", "snowy peaks and deep valleys", "climbed all the way to the top"),
        ("the city", "tall buildings and busy streets", "rode on a red bus"),
        ("the library", "shelves full of books", "read stories together"),
        ("the museum", "old bones and shiny gold crowns", "looked at the dinosaur bones"),
        ("the desert", "golden sand and tall cactus plants", "watched the sun set over the dunes"),
        ("the seaside", "boats, seagulls and a long pier", "ate ice cream on the pier"),
        ("the swimming pool", "a big blue pool and a water slide", "splashed down the water slide"),
    ),
    "water": (
        ("the beach", "shells, crabs and big sandcastles", "looked for shells in the sand"),
        ("the island", "palm trees and a sandy beach", "looked for shells on the sand"),
        ("the lighthouse", "a tall white tower with a bright light", "watched the boats come home"),
        ("the harbour", "fishing boats and busy seagulls", "counted the boats"),
        ("the seaside", "boats, seagulls and a long pier", "raced the waves"),
    ),
    "sky": (
        ("the mountains", "snowy peaks and deep valleys", "looked down at the tiny villages"),
        ("the castle", "tall towers and a big wooden gate", "circled the tallest tower"),
        ("the city", "tall buildings and busy streets", "counted the rooftops"),
        ("the beach", "shells, crabs and big sandcastles", "watched the waves roll in"),
        ("the seaside", "boats, seagulls and a long pier", "raced the seagulls"),
    ),
    "space": (
        ("the moon", "grey dust and deep craters", "bounced across the dusty ground"),
        ("space", "bright stars and spinning planets", "raced a shooting star"),
        ("the red planet", "red rocks and tall red hills", "looked for little red stones"),
        ("the stars", "thousands of twinkling stars", "counted the stars"),
    ),
}
EARTH = ("land", "water", "sky")  # plots that need weather, soil or a pond happen here, not in space


@dataclass(frozen=True)
class Plot:
    topic: str  # how a request names this plot; every word of it occurs in each story of the plot
    beats: tuple[tuple[str, ...], ...]  # one alternative per beat, in order; "" skips the beat
    want: str  # what the hero wanted, true of every story of the plot
    needs_hands: bool = False
    realms: tuple[str, ...] = (*EARTH, "space")
    aliases: tuple[str, ...] = ()  # other names for the topic, under the same rule

    def suits(self, kind: Kind) -> bool:
        return (kind.hands or not self.needs_hands) and kind.realm in self.realms


PLOTS = (
    Plot(
        "a lost {item}",
        (
            (
                "{N} had {a_item} that {he} loved very much, and {he} took it everywhere.",
                "Every day, {N} played with {his} {colour} {item} from morning until night.",
                "The thing {N} loved most of all was {a_item}.",
            ),
            (
                "{When}, {N} looked for the {item}, but it was gone. {He} had lost it!",
                "{When}, the {item} was lost, and {N} felt very {sad}.",
                "{When}, {N} could not find the {item} anywhere, and {he} felt {sad} because it was lost.",
            ),
            (
                "{He} searched {dest} and {dest2}, but the {item} was not there.",
                "{He} {move} to {dest} and looked everywhere, but {he} could not see it.",
                "{He} looked near {dest} and all around {dest2} until {he} {was} tired.",
            ),
            (
                'Then {he} met {friend}, who said, "I will help you look!"',
                "On the way, {he} met {friend}, who kindly offered to help.",
                "",
            ),
            (
                "At last, {he} found the {item} {spot}.",
                "Suddenly, {he} saw something {colour} {spot}, and it was the {item}!",
                "Just as the sun was setting, {he} spotted the {item} {spot}.",
            ),
            (
                "{N} held it close and smiled all the way home.",
                "{N} {was} so {happy}, and {he} promised to take better care of it.",
                "From then on, {N} kept the {item} safe.",
            ),
        ),
        want="{N} wanted to find {his} lost {item}.",
    ),
    Plot(
        "a new friend",
        (
            (
                "{N} {was} lonely and wished for a new friend.",
                "More than anything, {N} wanted a new friend.",
                "{N} had no one to play with and dreamed of finding a new friend.",
            ),
            (
                "{When}, {he} {move} to {dest} and met {friend}.",
                "{When}, {N} saw {friend} sitting all alone near {dest}.",
            ),
            (
                '"Hello," said {N}. "Would you like to play?"',
                "{F} looked shy at first, but {N} smiled and said hello.",
                '"Hello! My name is {F}," said the {fnoun} with a friendly wave.',
                "",
            ),
            ("They {activity} {until}.", "Together, they {activity} and {activity2}."),
            ("", "{F} laughed, and {N} laughed too.", "{N} felt warm and {happy} inside."),
            (
                "From that day on, {both} were best friends.",
                "{N} {was} never lonely again.",
                "After that, {both} met at {dest} every single day.",
            ),
        ),
        want="{N} wanted a new friend.",
    ),
    Plot(
        "a long journey",
        (
            (
                "{When}, {N} set off on a long journey to {far}.",
                "{N} had always dreamed of seeing {far}, so {he} set off on a long journey.",
                "{When}, {N} decided to go on a long journey to {far}.",
            ),
            ("{He} said goodbye to {his} friends and took some {food} for the way.", "", ""),
            ("{He} {move} past {sight}, and then past {sight2}.", "On the way, {he} saw {sight} and {sight2}."),
            (
                "The way was long, and soon {he} {was} tired and a little {scared}.",
                "When night came, {N} rested under the stars.",
                "",
            ),
            (
                "Then {he} met {friend}, who showed {him} the way.",
                '{Friend} saw {him} and said, "Follow me. I know the way!"',
                "",
            ),
            (
                "At last, {N} reached {far}, and it was more beautiful than {he} had ever imagined.",
                "At last, {he} arrived at {far}, and {he} felt very {happy}.",
                "Finally, {N} saw {far}, shining in the evening light.",
            ),
            (
                "When {he} came home, {he} told everyone about {his} long journey.",
                "{He} could not wait for {his} next adventure.",
                "",
            ),
        ),
        want="{N} wanted to see {far}.",
    ),
    Plot(
        "a big storm",
        (
            (
                "{Plain}, dark clouds filled the sky, and a big storm began.",
                "{Plain}, the wind began to howl, and a big storm rolled over {dest}.",
            ),
            ("The rain fell hard, and thunder rumbled far away.", "Lightning flashed across the sky.", ""),
            (
                "Through the rain, {N} saw {friend}, cold and wet and {scared}.",
                "Through the rain, {N} heard a small voice. It was {friend}, who was lost in the storm.",
            ),
            (
                "{N} helped {F} find shelter in {shelter}, and they waited there until the storm was over.",
                "Together, {both} hurried to {shelter} and told stories until the storm passed.",
                '"Come with me!" said {N}, and they hid in {shelter} until the wind grew quiet.',
            ),
            (
                "In the morning, the sun came out, and a rainbow shone over {dest}.",
                "Soon the clouds rolled away, and the world was calm and bright again.",
            ),
            ("{F} thanked {N} for being so brave.", "{both} became good friends after that.", ""),
        ),
        want="{N} wanted to keep {F} safe from the storm.",
        realms=EARTH,
    ),
    Plot(
        "a big race",
        (
            (
                "There was going to be a big race at {dest}, and {N} wanted to win more than anything.",
                "{When}, everyone gathered at {dest} for the big race.",
                "Every year, there was a big race at {dest}, and this year {N} practised every day.",
            ),
            (
                "At the starting line, {N} stood next to {friend}.",
                "{N} lined up beside {friend}, who looked very fast.",
            ),
            ('"Ready, steady, go!" called the {judge}.', "The {judge} blew a whistle, and the race began."),
            ("{N} {move} as fast as {he} could.", ""),
            (
                "Near the end, {F} got stuck and could not move. {N} stopped to help, and they crossed the "
                "finish line together while everyone cheered.",
                "{N} crossed the finish line first! Everyone cheered, and {F} smiled at {him}.",
                "{F} won the race, but {N} came a close second and felt {happy} because {he} had done {his} best.",
                "Then {F} fell behind, so {N} slowed down and waited, and they finished the race side by side.",
            ),
            ("", "It was the best race ever.", "{N} learned that having fun was more important than winning."),
        ),
        want="{N} wanted to win the big race.",
    ),
    Plot(
        "helping a friend",
        (
            (
                "{When}, {N} heard someone crying near {dest}. It was {friend}.",
                "{When}, {N} {move} to {dest} and found {friend} looking very sad.",
                "{When}, {N} met {friend} near {dest}, and {F} looked worried.",
            ),
            (
                "{F} had lost {fhis} way home, so {N} showed {fhim} the path back.",
                "{F} was stuck on a high rock and could not get down, so {N} helped {fhim} climb down slowly.",
                "{F} had dropped {fhis} {fitem} into the pond, and {N} helped {fhim} get it back.",
                "{F} was too tired to go home alone, so {N} stayed with {fhim} all the way.",
                "{F} was hungry and had nothing to eat, so {N} shared some {food} with {fhim}.",
                "{F} could not find {fhis} family, so {N} helped {fhim} look until they found them near {dest2}.",
            ),
            ('"Thank you, {N}!" said {F}.', "{F} smiled and thanked {N} again and again.", "{F} gave {N} a big hug."),
            ("{N} felt {happy} inside.", "", "{N} smiled all the way home."),
            (
                "{N} learned that helping a friend is the best feeling of all.",
                "That day, {N} found out how good helping a friend can feel.",
                "Helping a friend had made it a wonderful day.",
            ),
        ),
        want="{N} wanted to help {F}.",
        realms=EARTH,
    ),
    Plot(
        "learning to {skill}",
        (
            ("{N} wanted to {skill} more than anything.", "{N} watched others {skill} and wished {he} could too.", ""),
            ("{When}, {N} started learning to {skill}.", "{When}, {N} began learning to {skill}."),
            (
                "At first, it was very hard, and {he} felt {sad}.",
                "At first, {he} made lots of mistakes.",
                "The first time {he} tried, everything went wrong, and {N} almost gave up.",
            ),
            (
                'But {friend} said, "Keep trying. You can do it!"',
                "Then {friend} came by and showed {him} a little trick.",
                "",
            ),
            (
                "So {N} tried again and again, and every day {he} got a little better.",
                "{N} practised every day, from morning until night.",
                "{N} did not give up. {He} tried again, and again, and again.",
            ),
            ("At last, {N} could {skill}!", "One day, {he} could finally {skill}."),
            ("{He} felt so {happy}.", "{N} {was} very proud of {self}.", "Everyone clapped and cheered.", ""),
        ),
        want="{N} wanted to learn to {skill}.",
    ),
    Plot(
        "a surprise party",
        (
            ("{N} had a best friend, {friend}.", "{N} {was} good friends with {friend}."),
            (
                "Soon it was {F}'s birthday, so {N} planned a surprise party.",
                "{F}'s birthday was coming, and {N} wanted to give {fhim} a surprise party.",
            ),
            (
                "{He} hung {colour} balloons at {dest} and made a big {cake} cake.",
                "{He} asked all {his} friends to help, and they decorated {dest} with {colour} ribbons.",
            ),
            ("When everything was ready, they all hid behind the bushes and waited quietly.", ""),
            (
                'When {F} arrived, everyone jumped out and shouted, "Surprise!"',
                'When {F} came in, they all shouted, "Happy birthday!"',
            ),
            ("{F} was so surprised that {fhe} laughed and laughed.", "{F} could not stop smiling.", ""),
            ("They ate cake and danced {until}.", "They played games and sang songs {until}."),
            ("It was the best party ever.", "{F} said it was the best birthday of {fhis} life.", ""),
        ),
        want="{N} wanted to give {F} a surprise party.",
    ),
    Plot(
        "a dark night",
        (
            (
                "It was a dark night, and {N} could not sleep.",
                "One dark night, {N} woke up and felt {scared}.",
                "On a very dark night, {N} heard a strange noise outside.",
            ),
            (
                "{N} {was} afraid of the dark, and every shadow looked like a monster.",
                "The wind whistled, and the trees creaked.",
                "",
            ),
            (
                "Then {he} heard a soft sound, but it was only {friend}.",
                "Something moved outside, but it was only {friend}.",
            ),
            (
                '"Do not be afraid," said {F}. "Come and look at the sky."',
                '"The night is not scary," said {F}. "It is full of wonders."',
            ),
            (
                "Together, they looked up at the moon and the twinkling stars.",
                "{F} showed {N} the bright moon and a thousand stars.",
                "They watched the fireflies dance in the dark.",
            ),
            ("{N} saw that the night was beautiful.", "", "{N} felt calm and safe."),
            ("After that night, {N} {was} never afraid of the dark again.", "{He} went back to sleep with a smile."),
        ),
        want="{N} wanted to be brave in the dark.",
        realms=EARTH,
    ),
    Plot(
        "a special present",
        (
            (
                "{N} wanted to give {friend} a special present, but {he} did not know what to make.",
                "{When}, {N} decided to make a special present for {friend}.",
            ),
            ("{He} thought and thought, and then {he} had an idea!", ""),
            ("{He} {move} to {dest} and collected {things}.", "{He} gathered {things} from {dest}."),
            ("Carefully, {he} made {craft}.", "{He} worked all afternoon to make {craft}."),
            (
                "When {F} saw the present, {fhe} smiled from ear to ear.",
                "{F} loved it and gave {N} a big hug.",
                '"This is wonderful!" said {F}.',
            ),
            (
                "{N} felt {happy}, because giving was even better than getting.",
                "It was the nicest present {F} had ever had.",
                "",
            ),
        ),
        needs_hands=True,
        want="{N} wanted to make a special present for {F}.",
    ),
    Plot(
        "a tiny seed",
        (
            ("{When}, {N} found a tiny seed near {dest}.", "{Friend} gave {N} a tiny seed."),
            (
                "{He} planted it in a sunny corner of the garden and gave it water every day.",
                "{He} dug a little hole, planted the seed, and watered it every morning.",
            ),
            ("For a long time, nothing happened.", "Days went by, and nothing grew.", ""),
            ("Then one morning, a little green shoot popped up.", "At last, a tiny green leaf appeared."),
            (
                "It grew taller and taller, until it was a big {colour} flower.",
                "Soon it became a tall plant with {colour} flowers.",
            ),
            ("{N} felt so {happy}.", "{N} shared the flowers with all {his} friends.", ""),
        ),
        needs_hands=True,
        want="{N} wanted the tiny seed to grow.",
        realms=EARTH,
    ),
    Plot(
        "a snowy day",
        (
            (
                "One winter morning, {N} woke up and saw that everything was white. It was a snowy day!",
                "It was a snowy day, and soft flakes were falling on {dest}.",
            ),
            ("{He} put on a warm {colour} scarf and hurried outside.", "{He} {move} outside to catch snowflakes.", ""),
            (
                "There {he} met {friend}, and together they built a big snowman with a carrot nose.",
                "{He} met {friend}, and they built a snowman with pebble eyes and {a_hat}.",
            ),
            (
                "They slid down the hill on a wooden sled, laughing all the way.",
                "Then they had a snowball fight, and {F} won.",
                "",
            ),
            (
                "When they got cold, they went inside and drank warm milk by the fire.",
                "Later, they warmed up by the fire with cups of hot cocoa.",
            ),
            ("It was the best snowy day ever.", "{N} hoped it would snow again the next day.", ""),
        ),
        needs_hands=True,
        want="{N} wanted to play in the snow.",
        realms=EARTH,
    ),
    Plot(
        "a treasure map",
        (
            (
                "{When}, {N} found an old treasure map near {dest}.",
                "{When}, the wind blew an old treasure map right up to {N}.",
            ),
            ("The map had a big red X on it, far beyond {dest2}.", ""),
            (
                "{N} showed it to {friend}, and they set off together.",
                "{Friend} wanted to come too, so they set off together.",
            ),
            (
                "They followed the map past {sight} and {sight2}.",
                "They followed the map carefully, counting every step.",
            ),
            (
                "At the X, they dug and dug until they found a wooden box.",
                "At last, they reached the X and found an old chest under a tree.",
            ),
            ("Inside, they found {treasure}!", "When they opened it, they saw {treasure}."),
            ("{both} shared the treasure with everyone in the village.", "They laughed all the way home.", ""),
        ),
        needs_hands=True,
        want="{N} wanted to find the treasure on the old map.",
    ),
    Plot(
        "a rainy day",
        (
            (
                "{Plain}, it was a rainy day, and big drops fell on {dest}.",
                "It was a rainy day, and the rain went pitter-patter all morning.",
            ),
            ("{N} felt {sad}, because {he} could not play outside.", "{N} looked out at the grey sky and sighed.", ""),
            (
                'Then {friend} came by and said, "Let us play in the rain!"',
                "Then {he} saw {friend} splashing in a puddle.",
            ),
            (
                "So {he} {move} outside, and they jumped in every puddle they could find.",
                "They splashed in the puddles and sailed little paper boats.",
            ),
            ("", "Soon they were wet from head to toe, but they did not mind.", "They laughed and laughed."),
            (
                "When the rain stopped, a bright rainbow shone over {dest}.",
                "At last, the sun came out, and a rainbow appeared in the sky.",
            ),
            ("{N} learned that a rainy day can be fun too.", "It was the best rainy day ever.", ""),
        ),
        needs_hands=True,
        want="{N} wanted to play outside on the rainy day.",
        realms=EARTH,
    ),
    Plot(
        "a windy day",
        (
            (
                "{Plain}, it was a windy day, and the trees were swaying.",
                "It was a windy day, and the wind whooshed around {dest}.",
            ),
            (
                "Suddenly, a big gust blew {his} {colour} {item} away!",
                "Whoosh! The wind took {his} {colour} {item} and carried it high into the air.",
            ),
            ("{N} {move} after it as fast as {he} could.", "{N} chased it past {dest} and {dest2}."),
            ("On the way, {he} met {friend}, who wanted to help.", "{Friend} saw what happened and came to help.", ""),
            (
                "At last, the {item} landed {spot}, and {N} found it there.",
                "Finally, the wind dropped, and the {item} fell gently {spot}.",
            ),
            ("{N} kept the {item} close all the way home.", "{N} laughed, because it had been a big adventure.", ""),
        ),
        want="{N} wanted to get {his} {item} back from the wind.",
        realms=EARTH,
    ),
    Plot(
        "a sunny day",
        (
            ("{Plain}, it was a hot, sunny day.", "It was a sunny day, and the sun shone brightly over {dest}."),
            ("{N} felt very hot, so {he} went to find somewhere cool.", "{N} wanted to find a way to cool down."),
            (
                "{He} {move} to {dest}, where {he} met {friend}.",
                "Near {dest}, {he} found {friend} resting in the shade.",
            ),
            (
                "Together, they splashed in the cool water and ate {food}.",
                "They rested under a big tree and shared some ice cream.",
                "They had a picnic in the shade and ate {food}.",
            ),
            ("When the sun went down, the air grew cool and calm.", "In the evening, a soft breeze began to blow."),
            ("{N} thought it was the best sunny day of the summer.", "{N} went home tired and {happy}.", ""),
        ),
        want="{N} wanted to find somewhere cool on the hot day.",
        realms=EARTH,
    ),
    Plot(
        "a trip to {place}",
        (
            (
                "{When}, {N} went on a trip to {place}.",
                "{N} had always wanted to see {place}, so one day {he} went on a trip to {place}.",
            ),
            ("{He} {move} all the way there, feeling {happy}.", "The way was long, but {N} did not mind.", ""),
            ("When {he} got to {place}, {he} saw {place_sight}.", "There {he} saw {place_sight}."),
            (
                "{He} met {friend}, and together they {place_fun}.",
                "{Friend} showed {him} around, and they {place_fun}.",
            ),
            ("", "{N} laughed and laughed.", "It was even better than {he} had imagined."),
            (
                "At the end of the day, {N} went home and dreamed about {place}.",
                "{N} promised to visit {place} again soon.",
            ),
        ),
        want="{N} wanted to see {place}.",
        aliases=("{place}",),
    ),
)


@dataclass(frozen=True)
class Character:
    name: str  # how the story refers to it after the introduction
    call: str  # the name of the one its noun names: "Mia" of "Mia and Biscuit", whose noun is "girl"
    intro: str  # first mention, e.g. "a brave little boat named Bobby"
    requests: tuple[str, ...]  # ways to ask for it; every word of each occurs in the intro
    pronoun: Pronoun
    kind: Kind
    trait: str

    @property
    def realm(self) -> str:
        return self.kind.realm


@dataclass(frozen=True)
class Story:
    text: str
    hero: Character
    plot: Plot
    facts: dict[str, str]  # every field the templates filled, plus the topic and what a question can ask
    aliases: tuple[str, ...]  # the plot's other topic names, filled in
    friend_in_story: bool  # the friend it drew is introduced in it (some plots leave the friend out)


@dataclass(frozen=True)
class Exchange:
    user: str
    model: str
    thought: str  # the plan written in the thought channel when the conversation thinks


def article(phrase: str) -> str:
    """Prefix the right indefinite article: "an owl", "a unicorn"."""
    vowel = phrase[0] in "aeiou" and not phrase.startswith(("uni", "use", "eu", "one"))
    return ("an " if vowel else "a ") + phrase


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _person(rng: random.Random, kind: Kind) -> Character:
    pronoun = kind.pronoun or rng.choice((HE, SHE))
    name, trait = rng.choice(GIRL_NAMES if pronoun is SHE else BOY_NAMES), rng.choice(TRAITS)
    full = f"{article(trait)} {kind.noun} named {name}"
    roll = rng.random()
    if roll < 0.5:
        requests = (full, article(kind.noun), article(f"{trait} {kind.noun}"), name)
        return Character(name, name, full, requests, pronoun, kind, trait)
    if kind.noun in ("girl", "boy"):  # a child is often introduced by name alone
        return Character(name, name, name, (name,), pronoun, kind, trait)
    intro = f"{name} the {kind.noun}"
    return Character(name, name, intro, (intro, article(kind.noun)), pronoun, kind, trait)


def _person_and_pet(rng: random.Random) -> Character:
    person = _person(rng, rng.choice(PEOPLE[:2]))
    pet, pet_name = rng.choice(PETS), rng.choice(CRITTER_NAMES)
    short = f"{person.name} and {person.pronoun.poss} {pet}"
    intro = f"{short} {pet_name}"
    name = f"{person.name} and {pet_name}"
    return Character(name, person.name, intro, (short, intro), THEY, person.kind, person.trait)


def _creature(rng: random.Random, kind: Kind) -> Character:
    """An animal or a thing with a name, introduced as "a shiny red kite named Zip" or "Zip the red kite"."""
    name, trait = rng.choice(CRITTER_NAMES), rng.choice(TRAITS)
    look = rng.choice(LOOKS.get(kind.group) or LOOKS[kind.category])
    adjectives = rng.choice(("", trait, look, f"{trait} little", f"{trait} {look}"))
    described = f"{adjectives} {kind.noun}".strip()
    pronoun = IT if kind.category == "object" else rng.choice((HE, SHE))
    if rng.random() < 0.3:
        intro = f"{name} the {described}"
        requests = (intro, f"{name} the {kind.noun}", article(kind.noun))
    else:
        intro = f"{article(described)} named {name}"
        requests = (intro, article(described), article(kind.noun))
    return Character(name, name, intro, tuple(dict.fromkeys(requests)), pronoun, kind, trait)


def make_hero(rng: random.Random, kind: Kind | None = None) -> Character:
    """A hero of `kind`, or of any kind: every noun of HEROES about equally often, children a little more."""
    if kind is None:
        roll = rng.random()
        if roll < 0.08:
            return _person_and_pet(rng)
        kind = rng.choice(PEOPLE[:2]) if roll < 0.2 else rng.choice(HEROES)
    return _person(rng, kind) if kind.category == "person" else _creature(rng, kind)


def _friend(rng: random.Random, hero: Character) -> Character:
    noun = rng.choice(FRIENDS[hero.realm])
    name = rng.choice([n for n in CRITTER_NAMES if n not in hero.name.split()])
    adjective = rng.choice(TRAITS + ANIMAL_LOOKS)
    kind = Kind(noun, "animal", "forest", ("went",), hero.realm)
    return Character(
        name, name, f"{article(adjective)} {noun} named {name}", (), rng.choice((HE, SHE)), kind, adjective
    )


def _story_fields(rng: random.Random, hero: Character, friend: Character) -> dict[str, str]:
    """Every slot a template may use, drawn once so that a story stays consistent with itself."""
    kind, p, fp = hero.kind, hero.pronoun, friend.pronoun
    dest, dest2 = rng.sample(DESTINATIONS[hero.realm], 2)
    sight, sight2 = rng.sample(SIGHTS[hero.realm], 2)
    activity, activity2 = rng.sample(ACTIVITIES, 2)
    scenery, scenery2 = rng.sample(SCENERY[hero.realm], 2)
    place, place_sight, place_fun = rng.choice(PLACES[hero.realm])
    colour = rng.choice(COLOURS)
    item = rng.choice(LOST_ITEMS.get(kind.group) or LOST_ITEMS[kind.category])
    return {
        "N": hero.name,
        "call": hero.call,
        "noun": kind.noun,
        "a_noun": article(kind.noun),
        "intro": hero.intro,
        "Intro": _cap(hero.intro),
        "trait": hero.trait,
        "he": p.subj,
        "He": _cap(p.subj),
        "him": p.obj,
        "his": p.poss,
        "self": p.refl,
        "was": p.was,
        "F": friend.name,
        "friend": friend.intro,
        "Friend": _cap(friend.intro),
        "fnoun": friend.kind.noun,
        "a_fnoun": article(friend.kind.noun),
        "fhe": fp.subj,
        "fhim": fp.obj,
        "fhis": fp.poss,
        "both": " and ".join((hero.name.replace(" and ", ", "), friend.name)),
        "move": rng.choice(kind.moves),
        "home": rng.choice(HOMES[kind.group]),
        "like": rng.choice(LIKES.get(kind.group) or LIKES[kind.category]),
        "skill": rng.choice(SKILLS.get(kind.group) or SKILLS[kind.category]),
        "When": rng.choice((f"One {rng.choice(DAY_WORDS)} {rng.choice(TIMES)}", *PLAIN_WHENS)),
        "Plain": rng.choice(PLAIN_WHENS),
        "until": rng.choice(UNTILS),
        "dest": dest,
        "dest2": dest2,
        "sight": sight,
        "sight2": sight2,
        "far": rng.choice(FAR_PLACES[hero.realm]),
        "shelter": rng.choice(SHELTERS[hero.realm]),
        "place": place,
        "place_sight": place_sight,
        "place_fun": place_fun,
        "colour": colour,
        "item": item,
        "a_item": article(f"{colour} {item}"),
        "a_hat": article(f"{colour} hat"),
        "spot": rng.choice(SPOTS),
        "fitem": rng.choice(LOST_ITEMS["animal"]),
        "activity": activity,
        "activity2": activity2,
        "food": rng.choice(FOODS),
        "cake": rng.choice(CAKES),
        "judge": rng.choice(JUDGES),
        "things": rng.choice(GIFT_THINGS),
        "craft": rng.choice(CRAFTS),
        "treasure": rng.choice(TREASURES),
        "scenery": scenery,
        "scenery2": scenery2,
        "happy": rng.choice(HAPPY),
        "sad": rng.choice(SAD),
        "scared": rng.choice(SCARED),
    }


def _count_sentences(text: str) -> int:
    # A stop ends a sentence unless speech carries on: '"Go!" called the owl.' is one sentence.
    return len(re.findall(r'[.!?]"?(?=\s+[A-Z"]|$)', text))


def _render(rng: random.Random, beats: tuple[tuple[str, ...], ...], fields: dict[str, str]) -> list[str]:
    """One sentence per beat ("" where the beat is skipped)."""
    return [rng.choice(alternatives).format_map(fields) for alternatives in beats]


def _fits(story: str) -> bool:
    return MIN_WORDS <= len(story.split()) <= MAX_WORDS and MIN_SENTENCES <= _count_sentences(story) <= MAX_SENTENCES


def tell(rng: random.Random, hero: Character, plot: Plot | None = None) -> Story:
    """A story about `hero` (its plot drawn unless given) and the facts a question about it can ask for."""
    friend = _friend(rng, hero)
    plot = plot or rng.choice([p for p in PLOTS if p.suits(hero.kind)])
    fields = _story_fields(rng, hero, friend)
    beats = (INTROS, DETAILS, *plot.beats, ENDINGS)
    sentences = _render(rng, beats, fields)
    while not _fits(" ".join(filter(None, sentences))):  # a few beat combinations run long or short: draw again
        sentences = _render(rng, beats, fields)
    text = " ".join(filter(None, sentences))
    # "In the end, ..." retells the plot's last sentence that is not speech; lower-cased unless it opens with a name.
    last = [s for s in sentences[2:-1] if s and not s.startswith('"')][-1]
    named = last.split()[0].strip(",") in {*hero.name.split(), friend.name}
    facts = fields | {
        "topic": plot.topic.format_map(fields),
        "want": plot.want.format_map(fields),
        "ending": last if named else last[0].lower() + last[1:],
    }
    aliases = tuple(alias.format_map(fields) for alias in plot.aliases)
    return Story(text, hero, plot, facts, aliases, fields["friend"] in text)


def _thought(rng: random.Random, kind: str, story: Story, subject: str = "") -> str:
    # A plan to meet the friend only where the story does: a thought must not promise what the answer leaves out.
    plans = [t for t in STORY_THOUGHTS[kind] if story.friend_in_story or "{a_fnoun}" not in t]
    return rng.choice(plans).format_map(story.facts | {"subject": subject})


def _subject(rng: random.Random, hero: Character) -> str:
    """How a follow-up names a hero: mostly plainly ("a bear"), where the story's intro names its kind, else as a
    first request would (a child introduced by name alone is asked for by name)."""
    plain = article(hero.kind.noun)
    return plain if plain in hero.requests and rng.random() < 0.7 else rng.choice(hero.requests)


def _first_request(rng: random.Random, story: Story) -> tuple[Exchange, Kind | None]:
    """The opening request and its plan; the kind it asked for, if it named one ("Another one" keeps to it)."""
    hero, facts = story.hero, story.facts
    roll = rng.random()
    if roll >= CHAT_FRACTION:  # no subject: the trainer fills in a generic request
        return Exchange("", story.text, _thought(rng, "generic", story)), None
    if roll < 0.4 * CHAT_FRACTION:
        subject = rng.choice((facts["topic"], *story.aliases))
        return Exchange(rng.choice(REQUESTS).format(subject), story.text, _thought(rng, "topic", story, subject)), None
    if roll < 0.55 * CHAT_FRACTION and facts["a_noun"] in hero.requests:
        subject = f"{facts['a_noun']} and {facts['topic']}"  # "a fox and a big storm"
    else:
        subject = rng.choice(hero.requests)
    return Exchange(rng.choice(REQUESTS).format(subject), story.text, _thought(rng, "hero", story, subject)), hero.kind


def _follow_up(rng: random.Random, last: Story, asked: Kind | None) -> tuple[Exchange, Story, Kind | None]:
    """A request for another story: about a new subject, one more of the same, or the last plot with a new hero."""
    roll = rng.random()
    if roll < 0.3:
        hero = make_hero(rng, asked)
        story = tell(rng, hero)
        kind = "another" if asked else "another_any"
        return Exchange(rng.choice(FOLLOW_UPS["another"]), story.text, _thought(rng, kind, story)), story, asked
    if roll < 0.55:
        hero = make_hero(rng, rng.choice([k for k in HEROES if last.plot.suits(k)]))
        story, kind = tell(rng, hero, last.plot), "instead"
    else:
        hero = make_hero(rng, rng.choice(HEROES))
        story, kind = tell(rng, hero), "new"
    subject = _subject(rng, hero)
    user = rng.choice(FOLLOW_UPS[kind]).format(subject)
    return Exchange(user, story.text, _thought(rng, kind, story, subject)), story, hero.kind


def _question(rng: random.Random, story: Story) -> Exchange:
    """A question about `story`, answered from what the generator put in it."""
    kinds = [k for k in QUESTION_WEIGHTS if k != "friend" or story.friend_in_story]
    kind = rng.choices(kinds, [QUESTION_WEIGHTS[k] for k in kinds])[0]
    question, answers = rng.choice(QUESTIONS[kind])
    facts = story.facts
    return Exchange(
        _cap(question.format_map(facts)),
        _cap(rng.choice(answers).format_map(facts)),
        QUESTION_THOUGHTS[kind].format_map(facts),
    )


def _record(rng: random.Random) -> dict[str, object]:
    think = rng.random() < THINK_FRACTION
    conversation = rng.random() < CONVERSATION_FRACTION
    system = rng.choice(SYSTEM_PROMPTS) if rng.random() < SYSTEM_FRACTION else ""
    story = tell(rng, make_hero(rng))
    first, asked = _first_request(rng, story)
    exchanges = [first]
    told = True  # the last answer told a story
    for _ in range(rng.randint(1, MAX_EXCHANGES - 1) if conversation else 0):
        if rng.random() < (0.55 if told else 0.4):
            exchanges.append(_question(rng, story))
            told = False
        else:
            exchange, story, asked = _follow_up(rng, story, asked)
            exchanges.append(exchange)
            told = True
    record: dict[str, object] = {"prompt": first.user, "story": first.model}
    if system:
        record["system"] = system
    if len(exchanges) > 1:
        record["turns"] = [{"user": e.user, "model": e.model} for e in exchanges[1:]]
    if think:
        record["thoughts"] = [e.thought for e in exchanges]
    return record


def iter_stories(count: int, seed: int) -> Iterator[dict[str, object]]:
    """Yield `count` records; the same seed always yields the same records."""
    rng = random.Random(seed)
    for _ in range(count):
        yield _record(rng)


def generate_stories(count: int, seed: int) -> list[dict[str, object]]:
    return list(iter_stories(count, seed))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("work_tiny/stories.jsonl"))
    parser.add_argument("--count", type=int, default=60000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    start = time.perf_counter()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    turns = conversations = thinking = 0
    with args.out.open("w", encoding="utf-8") as f:
        for record in iter_stories(args.count, args.seed):
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
            later = len(record.get("turns", ()))
            turns, conversations, thinking = (
                turns + 1 + later,
                conversations + bool(later),
                thinking + ("thoughts" in record),
            )
    print(
        f"wrote {args.count} records ({conversations} conversations, {turns} model answers, {thinking} with thoughts) "
        f"to {args.out} in {time.perf_counter() - start:.1f}s"
    )


if __name__ == "__main__":
    main()
