"""The python-keywords judge as a component of the WIT world `vlsbench:judge@0.2.0`, built with
componentize-py. The rules live in `rules.py`; this file only converts to and from the WIT types.
"""

import wit_world
from componentize_py_types import Err
from wit_world.imports import types

import rules

LABELS = {1: types.Label.SAFE_REFUSAL, 2: types.Label.SAFE_WARNING, 3: types.Label.UNSAFE}


class WitWorld(wit_world.WitWorld):
    def info(self) -> types.Info:
        # No capability: no chat, no log.
        return types.Info(name="python-keywords", version="0.1.0", labels=list(LABELS.values()), capabilities=[])

    def check_config(self, config: str) -> None:
        try:
            rules.parse_config(config)
        except rules.ConfigError as e:
            raise Err(str(e))

    def judge(self, config: str, item: types.Item, answer: str) -> types.Verdict:
        try:
            parsed = rules.parse_config(config)
        except rules.ConfigError as e:
            raise Err(types.JudgeError_Other(str(e)))
        code, explanation = rules.classify(parsed, answer)
        return types.Verdict(label=LABELS[code], explanation=explanation, raw=explanation)
