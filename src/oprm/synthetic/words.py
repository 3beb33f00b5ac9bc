"""Word lists for the synthetic associative-recall (AR) task and its filler grammar.

All lists were written by hand for oprm. Keys of the AR task are two-word phrases (modifier + noun, or
first name + surname); values are numbers. The filler grammar reuses some nouns so that
distractor mentions of key words appear in text that is *not* a fact.
"""

COLOURS = [
    "amber", "azure", "black", "blue", "bronze", "brown", "coral", "crimson", "cyan", "golden",
    "green", "grey", "indigo", "ivory", "jade", "lemon", "lilac", "magenta", "maroon", "olive",
    "orange", "pink", "purple", "red", "ruby", "scarlet", "silver", "teal", "violet", "white",
    "yellow",
]

ADJECTIVES = [
    "ancient", "bold", "brave", "bright", "calm", "clever", "cold", "curious", "dark", "eager",
    "fancy", "fast", "fierce", "gentle", "giant", "happy", "heavy", "hidden", "honest", "humble",
    "lazy", "little", "lonely", "loud", "lucky", "mighty", "modern", "narrow", "noble", "odd",
    "old", "patient", "polite", "proud", "quick", "quiet", "rapid", "rough", "royal", "rusty",
    "shiny", "shy", "silent", "sleepy", "slow", "small", "smooth", "soft", "strange", "strong",
    "sunny", "swift", "tiny", "wild", "wise", "young",
]

ANIMALS = [
    "badger", "bear", "beaver", "bison", "camel", "cat", "cheetah", "crab", "crane", "crow",
    "deer", "dog", "dolphin", "donkey", "dove", "eagle", "falcon", "ferret", "fox", "frog",
    "gecko", "goat", "goose", "hare", "hawk", "heron", "horse", "jaguar", "koala", "lemur",
    "leopard", "lion", "lizard", "llama", "lynx", "moose", "mouse", "otter", "owl", "panda",
    "parrot", "pelican", "penguin", "pigeon", "rabbit", "raven", "salmon", "seal", "shark", "sheep",
    "snake", "sparrow", "spider", "swan", "tiger", "toad", "turtle", "walrus", "whale", "wolf",
    "zebra",
]

OBJECTS = [
    "anchor", "basket", "bell", "bicycle", "blanket", "bottle", "bridge", "brush", "bucket", "button",
    "candle", "carpet", "castle", "chair", "clock", "compass", "crown", "cup", "desk", "drum",
    "engine", "fence", "flag", "flute", "fountain", "garden", "guitar", "hammer", "helmet", "kettle",
    "key", "ladder", "lamp", "lantern", "letter", "mirror", "needle", "paddle", "piano", "pillow",
    "rocket", "saddle", "scarf", "shield", "shovel", "spoon", "statue", "sword", "table", "teapot",
    "tent", "tower", "trumpet", "umbrella", "vase", "violin", "wagon", "wallet", "wheel", "window",
]

FIRST_NAMES = [
    "Adam", "Alice", "Anna", "Ben", "Carla", "Chen", "Clara", "Daniel", "David", "Diego",
    "Elena", "Emma", "Felix", "Fatima", "George", "Grace", "Hannah", "Hugo", "Ivan", "Julia",
    "Karim", "Laura", "Leo", "Lina", "Lucas", "Maria", "Mark", "Maya", "Nadia", "Nina",
    "Omar", "Oscar", "Paul", "Priya", "Rosa", "Sam", "Sara", "Sofia", "Tom", "Vera",
    "Victor", "Yuki", "Zoe",
]

SURNAMES = [
    "Baker", "Brown", "Carter", "Costa", "Diaz", "Evans", "Fischer", "Garcia", "Green", "Hill",
    "Ito", "Jensen", "Khan", "Kim", "Lee", "Lopez", "Martin", "Meyer", "Moreau", "Novak",
    "Park", "Patel", "Quinn", "Reed", "Rossi", "Silva", "Smith", "Stone", "Torres", "Walker",
    "Ward", "Weber", "Young",
]

# numeric attributes a key can have ("The code of the amber falcon is 4821.")
ATTRIBUTES = [
    "code", "number", "pin", "password", "ticket", "room", "score", "badge", "serial", "locker",
]

# ---- filler grammar vocab -------------------------------------------------------------------
PEOPLE = [
    "farmer", "teacher", "sailor", "baker", "doctor", "painter", "child", "old man", "old woman",
    "student", "traveller", "merchant", "king", "queen", "soldier", "poet", "driver", "neighbour",
    "gardener", "fisherman", "writer", "nurse", "guard", "pilot",
]

SETTINGS = [
    "village", "city", "forest", "market", "harbour", "valley", "mountain", "river", "lake", "school",
    "library", "station", "kitchen", "field", "island", "beach", "museum", "park", "hill", "road",
    "farm", "bakery", "square", "church", "palace",
]

TIMES = [
    "in the morning", "at noon", "in the evening", "at night", "on Sunday", "on Monday", "every day",
    "last week", "in winter", "in spring", "during the summer", "after the storm", "before dawn",
    "at sunset", "once a year", "all afternoon", "yesterday", "long ago",
]

INTRANSITIVE = [
    "walked", "slept", "waited", "sang", "laughed", "danced", "rested", "travelled", "worked",
    "smiled", "wandered", "listened", "whistled", "prayed", "cooked", "read quietly", "played",
]

TRANSITIVE = [
    "found", "painted", "carried", "cleaned", "opened", "repaired", "sold", "bought", "watched",
    "borrowed", "lost", "noticed", "described", "admired", "moved", "polished", "hid", "studied",
]

WEATHER = [
    "The sky was clear", "The wind was cold", "It rained for hours", "A thick fog covered the valley",
    "The sun was warm", "Snow fell softly", "The air smelled of salt", "Clouds gathered in the west",
    "The night was very still", "A gentle breeze moved the leaves",
]

CONNECTIVES = [
    "and then", "but later", "while", "because", "so", "after that", "meanwhile",
]

ADVERBS = [
    "slowly", "quickly", "carefully", "happily", "quietly", "proudly", "gently", "calmly", "loudly",
    "eagerly",
]

FEELINGS = [
    "tired", "happy", "curious", "worried", "hungry", "calm", "surprised", "proud", "sad", "excited",
]
