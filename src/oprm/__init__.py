"""oprm: OPRM (Overflow Prevention for Recurrent Models, Ben-Kish et al., COLM 2025) on Hugging Face transformers."""

from .chunking import Chunk, chunk_spans, make_chunks
from .config import SELECTIONS, OPRMConfig
from .decoding import Answer
from .engine import OPRM, OPRMResult
from .errors import ModelError, OPRMUsageError
from .prompts import PromptParts, build_prompt, default_qa_template
from .selection import ChunkRecord
from .version import __version__


__all__ = ["OPRM", "OPRMConfig", "OPRMResult", "Answer", "ChunkRecord", "Chunk", "PromptParts", "OPRMUsageError",
           "ModelError", "SELECTIONS",
           "build_prompt", "chunk_spans", "make_chunks", "default_qa_template", "__version__"]
