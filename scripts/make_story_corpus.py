"""Generate a seeded corpus of simple children's stories for training dgemma-tiny.

Each record is one JSON line, {"prompt": str, "story": str}. About 70% are chat-framed: the prompt asks
for a story about a character or a topic, and the story is built around exactly what was asked. The rest
have an empty prompt. Every template and word list here was written for this project.

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

CHAT_FRACTION = 0.7
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
    category: str  # "person", "animal" or "object"
    moves: tuple[str, ...]  # past-tense ways of getting somewhere
    realm: str = "land"  # picks the places, friends and shelters that make sense for it
    hands: bool = True  # can make and plant things
    homes: tuple[str, ...] = ()  # empty: the category's defaults
    likes: tuple[str, ...] = ()
    skills: tuple[str, ...] = ()


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

PERSON_SKILLS = (
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
)
ANIMAL_SKILLS = (
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
)
DEFAULT_SKILLS = {"person": PERSON_SKILLS, "animal": ANIMAL_SKILLS}
DEFAULT_HOMES = {
    "person": (
        "in a cosy cottage",
        "in a small house by the woods",
        "in a quiet village",
        "on a busy farm",
        "in a flat above a bakery",
        "in a little town by the sea",
        "in a yellow house on a hill",
    ),
    "animal": (
        "in a deep forest",
        "in a green meadow",
        "by a quiet pond",
        "on a busy farm",
        "in a big garden",
        "near an old barn",
        "at the edge of the woods",
        "under an old oak tree",
    ),
}
DEFAULT_LIKES = {
    "person": (
        "reading books",
        "playing outside",
        "drawing pictures",
        "singing songs",
        "building things",
        "looking at the stars",
        "making new friends",
    ),
    "animal": (
        "playing in the sun",
        "exploring",
        "chasing butterflies",
        "napping in the grass",
        "telling jokes",
        "splashing in puddles",
        "eating berries",
    ),
}

PEOPLE = (Kind("girl", "person", ("walked", "ran", "skipped")), Kind("boy", "person", ("walked", "ran")))
PETS = ("dog", "cat", "puppy", "kitten", "pony", "rabbit", "hamster", "parrot")
ANIMALS = (
    Kind("fox", "animal", ("trotted", "ran")),
    Kind("rabbit", "animal", ("hopped",)),
    Kind("bear", "animal", ("padded", "walked")),
    Kind("mouse", "animal", ("scampered", "ran")),
    Kind("hedgehog", "animal", ("shuffled", "walked")),
    Kind("squirrel", "animal", ("scampered", "ran")),
    Kind("owl", "animal", ("flew",)),
    Kind("duck", "animal", ("waddled", "swam"), "water"),
    Kind("frog", "animal", ("hopped", "swam"), "water"),
    Kind("otter", "animal", ("swam",), "water"),
    Kind("turtle", "animal", ("crawled", "swam"), "water"),
    Kind("penguin", "animal", ("waddled", "swam"), "water"),
    Kind("elephant", "animal", ("stomped", "walked")),
    Kind("lion", "animal", ("padded", "ran")),
    Kind("giraffe", "animal", ("walked",)),
    Kind("monkey", "animal", ("swung", "ran")),
    Kind("pig", "animal", ("trotted",)),
    Kind("goat", "animal", ("trotted", "ran")),
    Kind("dog", "animal", ("trotted", "ran")),
    Kind("cat", "animal", ("padded", "walked")),
    Kind("deer", "animal", ("ran", "walked")),
    Kind("badger", "animal", ("shuffled", "walked")),
    Kind("kitten", "animal", ("padded", "ran")),
    Kind("puppy", "animal", ("bounded", "ran")),
    Kind("dragon", "animal", ("flew",)),
)
OBJECTS = (
    Kind(
        "boat",
        "object",
        ("sailed",),
        "water",
        hands=False,
        homes=("in a busy harbour", "on a quiet lake", "by a sleepy fishing village"),
        likes=("sailing in the sunshine", "bobbing on the waves", "carrying people across the bay"),
        skills=("sail through big waves", "sail in the dark", "steer around the rocks", "sail very fast"),
    ),
    Kind(
        "kite",
        "object",
        ("flew",),
        "sky",
        hands=False,
        homes=("in a cupboard under the stairs", "in a toy shop", "with a family by the sea"),
        likes=("dancing in the wind", "flying over the hills", "chasing the clouds"),
        skills=("fly very high", "dance in the wind", "loop the loop", "fly in a gentle breeze"),
    ),
    Kind(
        "robot",
        "object",
        ("rolled", "clanked"),
        homes=("in a busy workshop", "in a big city", "in a toy shop", "in a house full of gadgets"),
        likes=("fixing things", "counting stars", "helping people", "playing chess"),
        skills=("dance", "bake a cake", "play the piano", "paint", "juggle", "tell jokes", "ride a bike"),
    ),
    Kind(
        "train",
        "object",
        ("chugged", "puffed"),
        hands=False,
        homes=("at a little station", "in a big engine shed", "in a valley between the hills"),
        likes=("carrying people to town", "puffing through the hills", "blowing its whistle"),
        skills=("climb the steep hill", "pull heavy wagons", "whistle a tune", "go through the long tunnel"),
    ),
    Kind(
        "balloon",
        "object",
        ("floated", "drifted"),
        "sky",
        hands=False,
        homes=("in a field by the hills", "at a travelling fair", "in a barn by the river"),
        likes=("floating high in the sky", "looking at the world below", "drifting in the breeze"),
        skills=("float over the mountains", "land softly", "rise above the clouds"),
    ),
    Kind(
        "tractor",
        "object",
        ("rumbled", "drove"),
        hands=False,
        homes=("on a busy farm", "in a big red barn", "at the edge of a wheat field"),
        likes=("working in the fields", "pulling the hay cart", "driving through puddles"),
        skills=("plough the field", "pull the heavy cart", "drive through the mud", "drive backwards"),
    ),
    Kind(
        "plane",
        "object",
        ("flew", "zoomed"),
        "sky",
        hands=False,
        homes=("at a small airport", "in a big hangar", "on a grassy airfield"),
        likes=("flying through the clouds", "zooming over the sea", "carrying letters"),
        skills=("fly through the clouds", "land on a tiny island", "loop the loop", "fly at night"),
    ),
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
}
SHELTERS = {
    "land": ("an old barn", "a cosy cave", "a hollow tree", "a little shed", "a big tent"),
    "water": ("a quiet harbour", "a sheltered cove", "the boathouse", "a cave by the shore"),
    "sky": ("an old barn", "a garden shed", "a hollow tree", "a church tower"),
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
    "boat": ("flag", "bell", "anchor", "sail", "lantern"),
    "kite": ("ribbon", "tail", "bow"),
    "robot": ("bolt", "battery", "spring", "screwdriver", "wheel"),
    "train": ("whistle", "bell", "lamp", "carriage"),
    "balloon": ("basket", "rope", "flag"),
    "tractor": ("wheel", "trailer", "horn"),
    "plane": ("propeller", "flag", "lamp"),
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


@dataclass(frozen=True)
class Plot:
    topic: str  # how a request names this plot; every word of it occurs in each story of the plot
    beats: tuple[tuple[str, ...], ...]  # one alternative per beat, in order; "" skips the beat
    needs_hands: bool = False


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
    ),
)


@dataclass(frozen=True)
class Character:
    name: str  # how the story refers to it after the introduction
    intro: str  # first mention, e.g. "a brave little boat named Bobby"
    requests: tuple[str, ...]  # ways to ask for it; every word of each occurs in the intro
    pronoun: Pronoun
    kind: Kind
    trait: str

    @property
    def realm(self) -> str:
        return self.kind.realm


def _a(phrase: str) -> str:
    """Prefix the right indefinite article."""
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _person(rng: random.Random) -> Character:
    kind = rng.choice(PEOPLE)
    pronoun, names = (SHE, GIRL_NAMES) if kind.noun == "girl" else (HE, BOY_NAMES)
    name, trait = rng.choice(names), rng.choice(TRAITS)
    full = f"{_a(trait)} {kind.noun} named {name}"
    if rng.random() < 0.5:
        return Character(name, full, (full, name), pronoun, kind, trait)
    return Character(name, name, (name,), pronoun, kind, trait)


def _person_and_pet(rng: random.Random) -> Character:
    person = _person(rng)
    pet, pet_name = rng.choice(PETS), rng.choice(CRITTER_NAMES)
    short = f"{person.name} and {person.pronoun.poss} {pet}"
    intro = f"{short} {pet_name}"
    return Character(f"{person.name} and {pet_name}", intro, (short, intro), THEY, person.kind, person.trait)


def _creature(rng: random.Random, kinds: tuple[Kind, ...], looks: tuple[str, ...]) -> Character:
    """An animal or a thing with a name, introduced as "a shiny red kite named Zip" or "Zip the red kite"."""
    kind, name, trait = rng.choice(kinds), rng.choice(CRITTER_NAMES), rng.choice(TRAITS)
    look = rng.choice(looks)
    adjectives = rng.choice(("", trait, look, f"{trait} little", f"{trait} {look}"))
    described = f"{adjectives} {kind.noun}".strip()
    pronoun = IT if kind.category == "object" else rng.choice((HE, SHE))
    if rng.random() < 0.3:
        intro = f"{name} the {described}"
        requests = (intro, f"{name} the {kind.noun}")
    else:
        intro = f"{_a(described)} named {name}"
        requests = (intro, _a(described)) if adjectives else (intro,)
    return Character(name, intro, requests, pronoun, kind, trait)


def _hero(rng: random.Random) -> Character:
    roll = rng.random()
    if roll < 0.3:
        return _person(rng)
    if roll < 0.42:
        return _person_and_pet(rng)
    if roll < 0.75:
        return _creature(rng, ANIMALS, ANIMAL_LOOKS)
    return _creature(rng, OBJECTS, OBJECT_LOOKS)


def _friend(rng: random.Random, hero: Character) -> Character:
    noun = rng.choice(FRIENDS[hero.realm])
    name = rng.choice([n for n in CRITTER_NAMES if n not in hero.name.split()])
    adjective = rng.choice(TRAITS + ANIMAL_LOOKS)
    kind = Kind(noun, "animal", ("went",), hero.realm)
    return Character(name, f"{_a(adjective)} {noun} named {name}", (), rng.choice((HE, SHE)), kind, adjective)


def _story_fields(rng: random.Random, hero: Character, friend: Character) -> dict[str, str]:
    """Every slot a template may use, drawn once so that a story stays consistent with itself."""
    kind, p, fp = hero.kind, hero.pronoun, friend.pronoun
    dest, dest2 = rng.sample(DESTINATIONS[hero.realm], 2)
    sight, sight2 = rng.sample(SIGHTS[hero.realm], 2)
    activity, activity2 = rng.sample(ACTIVITIES, 2)
    scenery, scenery2 = rng.sample(SCENERY[hero.realm], 2)
    colour = rng.choice(COLOURS)
    item = rng.choice(LOST_ITEMS.get(kind.noun) or LOST_ITEMS[kind.category])
    return {
        "N": hero.name,
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
        "fhe": fp.subj,
        "fhim": fp.obj,
        "fhis": fp.poss,
        "both": " and ".join((hero.name.replace(" and ", ", "), friend.name)),
        "move": rng.choice(kind.moves),
        "home": rng.choice(kind.homes or DEFAULT_HOMES[kind.category]),
        "like": rng.choice(kind.likes or DEFAULT_LIKES[kind.category]),
        "skill": rng.choice(kind.skills or DEFAULT_SKILLS[kind.category]),
        "When": rng.choice((f"One {rng.choice(DAY_WORDS)} {rng.choice(TIMES)}", *PLAIN_WHENS)),
        "Plain": rng.choice(PLAIN_WHENS),
        "until": rng.choice(UNTILS),
        "dest": dest,
        "dest2": dest2,
        "sight": sight,
        "sight2": sight2,
        "far": rng.choice(FAR_PLACES[hero.realm]),
        "shelter": rng.choice(SHELTERS[hero.realm]),
        "colour": colour,
        "item": item,
        "a_item": _a(f"{colour} {item}"),
        "a_hat": _a(f"{colour} hat"),
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


def _render(rng: random.Random, beats: tuple[tuple[str, ...], ...], fields: dict[str, str]) -> str:
    sentences = (rng.choice(alternatives) for alternatives in beats)
    return " ".join(s.format_map(fields) for s in sentences if s)


def _fits(story: str) -> bool:
    return MIN_WORDS <= len(story.split()) <= MAX_WORDS and MIN_SENTENCES <= _count_sentences(story) <= MAX_SENTENCES


def _record(rng: random.Random) -> dict[str, str]:
    hero = _hero(rng)
    friend = _friend(rng, hero)
    plot = rng.choice([p for p in PLOTS if hero.kind.hands or not p.needs_hands])
    fields = _story_fields(rng, hero, friend)
    beats = (INTROS, DETAILS, *plot.beats, ENDINGS)
    story = _render(rng, beats, fields)
    while not _fits(story):  # a few beat combinations run long or short: draw the beats again
        story = _render(rng, beats, fields)
    prompt = ""
    if rng.random() < CHAT_FRACTION:
        subject = rng.choice(hero.requests) if rng.random() < 0.6 else plot.topic.format_map(fields)
        prompt = rng.choice(REQUESTS).format(subject)
    return {"prompt": prompt, "story": story}


def iter_stories(count: int, seed: int) -> Iterator[dict[str, str]]:
    """Yield `count` records; the same seed always yields the same records."""
    rng = random.Random(seed)
    for _ in range(count):
        yield _record(rng)


def generate_stories(count: int, seed: int) -> list[dict[str, str]]:
    return list(iter_stories(count, seed))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("work_tiny/stories.jsonl"))
    parser.add_argument("--count", type=int, default=60000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    start = time.perf_counter()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", encoding="utf-8") as f:
        for record in iter_stories(args.count, args.seed):
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    print(f"wrote {args.count} stories to {args.out} in {time.perf_counter() - start:.1f}s")


if __name__ == "__main__":
    main()
