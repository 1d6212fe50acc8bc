"""SGLang's TokenizerManager with drift's door checks in front of it.

Every request path of SGLang's HTTP server (``/generate``, the OpenAI routes,
``/encode``, the frontend language's calls) goes through
``TokenizerManager.generate_request`` before anything is sent to a scheduler,
and SGLang answers a ``ValueError`` raised there with a 400, also for a stream
(its handlers start the generator before sending the headers). The launcher
hands this class (``bind`` to the server's SLO classes) to SGLang's
``init_tokenizer_manager``. It also reads a request's own SLO from its headers
and hands it to the scheduler (``drift_sgl.door.slo``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Collection
from typing import Any, ClassVar

from sglang.srt.managers.tokenizer_manager import TokenizerManager

from drift_sgl.door.checks import DoorLimits, check_request, check_tokenized
from drift_sgl.door.slo import attach, requested_slo


class DriftTokenizerManager(TokenizerManager):
    """Checks each request (``drift_sgl.door.checks``) before SGLang handles it,
    and each prompt once SGLang has tokenised it."""

    #: Names of the server's SLO classes (``--drift-slo-classes``).
    slo_classes: ClassVar[frozenset[str]] = frozenset()

    @classmethod
    def bind(cls, slo_classes: Collection[str]) -> type[DriftTokenizerManager]:
        """This class for a server with these SLO classes."""
        return type(cls.__name__, (cls,), {"slo_classes": frozenset(slo_classes)})

    def __init__(self, server_args: Any, port_args: Any) -> None:
        super().__init__(server_args, port_args)
        config = self.model_config
        self.door_limits = DoorLimits(
            vocab_size=int(config.vocab_size),
            multimodal=bool(getattr(config, "is_multimodal", False)),
            hidden_size=int(config.hidden_size),
        )

    async def generate_request(self, obj: Any, request: Any = None) -> AsyncIterator[Any]:
        check_request(obj, self.door_limits)
        headers = getattr(request, "headers", None)
        requested = None if headers is None else requested_slo(headers, self.slo_classes)
        if requested is not None:
            attach(obj, requested)
        async for out in super().generate_request(obj, request):
            yield out

    def _validate_one_request(self, obj: Any, input_ids: list[int] | None) -> None:
        check_tokenized(obj, input_ids)
        super()._validate_one_request(obj, input_ids)
