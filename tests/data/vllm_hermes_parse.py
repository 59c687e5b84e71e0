"""Run in the serve venv (vLLM): each text of a JSON list on stdin through vLLM's own hermes tool parser.

.venv-serve/bin/python tests/data/vllm_hermes_parse.py TOKENIZER_DIR < texts.json
"""

import json
import sys

from transformers import AutoTokenizer
from vllm.tool_parsers.hermes_tool_parser import Hermes2ProToolParser

tok = AutoTokenizer.from_pretrained(sys.argv[1])
parser = Hermes2ProToolParser(tok)
out = []
for text in json.load(sys.stdin):
    info = parser.extract_tool_calls(text, request=None)
    out.append(
        {
            "tools_called": info.tools_called,
            "content": info.content,
            "calls": [{"name": c.function.name, "arguments": c.function.arguments} for c in info.tool_calls],
        }
    )
json.dump(out, sys.stdout)
