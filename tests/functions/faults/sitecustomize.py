"""Transient S3 faults for the local stack's tests, loaded into a function's worker
processes by putting this directory on their PYTHONPATH.

The first GetObject of each key containing IMGPIPE_TEST_FAULTY_KEYS, in each process,
fails with 503 SlowDown (raised before botocore's own retries, as a fault that outlasted
them): the handler reports those objects as failed, and only a retry of the batch can
classify them.
"""

import os

_marker = os.environ.get("IMGPIPE_TEST_FAULTY_KEYS")

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
