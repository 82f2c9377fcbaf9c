"""SAM CLI's own `start-api` service, in process, routing to our function through AWS's emulator.

Run with the SAM CLI virtualenv's python (it pins its own boto3 and pydantic):
    .venv-sam/bin/python tests/harness/sam_local_api.py TEMPLATE PORT INVOKE_URL

What `sam local start-api` does, minus Docker: routes come from the template through
SAM's own providers, events are built and responses parsed by SAM's
LocalApigwService. Only the runner differs: SAM's would start the emulator in a
container; this one posts to the emulator (aws-lambda-rie) already running as a
process with our runtime, with AWS_SAM_LOCAL=true as SAM sets it.
"""

from __future__ import annotations

import sys
import urllib.request
from pathlib import Path
from typing import Any

from samcli.lib.providers.api_provider import ApiProvider
from samcli.lib.providers.sam_stack_provider import SamLocalStackProvider
from samcli.lib.utils.stream_writer import StreamWriter
from samcli.local.apigw.local_apigw_service import LocalApigwService


class EmulatorRunner:
    """The part of SAM's LocalLambdaRunner that LocalApigwService uses."""

    def __init__(self, invoke_url: str) -> None:
        self.invoke_url = invoke_url

    def is_debugging(self) -> bool:
        return False

    def invoke(self, function_identifier: str, event: str, stdout: StreamWriter, **_: Any) -> None:
        # The emulator's address is one this script was given on 127.0.0.1, never a user's URL.
        request = urllib.request.Request(self.invoke_url, data=event.encode(), method="POST")  # noqa: S310
        with urllib.request.urlopen(request, timeout=300) as response:  # noqa: S310
            stdout.write_str(response.read().decode())


def main() -> None:
    template, port, invoke_url = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    stacks, _ = SamLocalStackProvider.get_stacks(template)
    api = ApiProvider(stacks, cwd=str(Path(template).parent)).api
    stderr = StreamWriter(sys.stderr, auto_flush=True)
    service = LocalApigwService(
        api=api, lambda_runner=EmulatorRunner(invoke_url), port=port, host="127.0.0.1", stderr=stderr
    )
    service.create()
    print(f"routes: {[(route.methods, route.path) for route in api.routes]}", flush=True)
    service.run()


if __name__ == "__main__":
    main()
