"""Synthetic tasks shipped with oprm: natural-language associative recall with an IDK answer."""
from .ar import AR_TEMPLATE, AREpisode, ar_messages, long_episodes, make_ar_episode, tokens_per_fact

__all__ = ["AR_TEMPLATE", "AREpisode", "ar_messages", "long_episodes", "make_ar_episode", "tokens_per_fact"]
