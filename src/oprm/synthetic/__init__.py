"""Synthetic tasks shipped with oprm: natural-language associative recall with an IDK answer."""
from .ar import AR_TEMPLATE, IDK, AREpisode, ar_messages, make_ar_episode

__all__ = ["AR_TEMPLATE", "IDK", "AREpisode", "ar_messages", "make_ar_episode"]
