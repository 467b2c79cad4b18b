"""The Admin service: an operator's view of the daemon (`slmd status`)."""

from __future__ import annotations

import time

from slmd_client._proto.slmd.v1 import admin_pb2

import slmd
from slmd.core import Engine
from slmd.runtime.base import ModelInfo
from slmd.server.identity import IdentityResolver


class AdminServicer:
    def __init__(self, engine: Engine, info: ModelInfo, identity: IdentityResolver) -> None:
        self.engine = engine
        self.info = info
        self.identity = identity

    async def Status(self, request, context):
        ident = self.identity.resolve(context)
        st = self.engine.stats
        return admin_pb2.StatusResponse(
            version=slmd.__version__,
            model_path=self.info.path,
            model_name=self.info.name,
            uptime_seconds=time.monotonic() - st.started_at,
            running_requests=self.engine.scheduler.num_running,
            waiting_requests=self.engine.scheduler.num_waiting,
            num_sequences=self.info.num_sequences,
            context_window=self.info.context_per_sequence,
            generated_tokens_total=st.generation_tokens_total,
            prompt_tokens_total=st.prompt_tokens_total,
            app_id=ident.app_id,
        )
