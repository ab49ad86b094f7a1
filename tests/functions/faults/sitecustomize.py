"""Transient S3 faults for the local stack's tests, loaded into a function's worker
processes by putting this directory on their PYTHONPATH.

Each GetObject of a key containing IMGPIPE_TEST_SLOW_KEYS first waits
IMGPIPE_TEST_SLOW_SECONDS (a batch made to run long).

The first GetObject of each key containing IMGPIPE_TEST_FAULTY_KEYS, in each process,
fails with 503 SlowDown (raised before botocore's own retries, as a fault that outlasted
them): the handler reports those objects as failed, and only a retry of the batch can
classify them.
"""

import os

_marker = os.environ.get("IMGPIPE_TEST_FAULTY_KEYS")
_slow = os.environ.get("IMGPIPE_TEST_SLOW_KEYS")

if _slow:
    import time

    import botocore.client

    _before_slow = botocore.client.BaseClient._make_api_call
    _delay_s = float(os.environ.get("IMGPIPE_TEST_SLOW_SECONDS") or 5)

    def _slow_api_call(self, operation_name, api_params):  # type: ignore[no-untyped-def]
        if operation_name == "GetObject" and _slow in str(api_params.get("Key", "")):
            time.sleep(_delay_s)
        return _before_slow(self, operation_name, api_params)

    botocore.client.BaseClient._make_api_call = _slow_api_call

if _marker:
    import botocore.client
    from botocore.exceptions import ClientError

    _original = botocore.client.BaseClient._make_api_call
    _failed: set[str] = set()

    def _make_api_call(self, operation_name, api_params):  # type: ignore[no-untyped-def]
        key = str(api_params.get("Key", ""))
        if operation_name == "GetObject" and _marker in key and key not in _failed:
            _failed.add(key)
            raise ClientError({"Error": {"Code": "SlowDown", "Message": "injected fault"},
                               "ResponseMetadata": {"HTTPStatusCode": 503}}, operation_name)
        return _original(self, operation_name, api_params)

    botocore.client.BaseClient._make_api_call = _make_api_call
