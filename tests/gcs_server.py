"""A local Cloud Storage server for tests/test_gcs.py: gcp-storage-emulator, plus generations.

Run as `python tests/gcs_server.py start --port=PORT --default-bucket=NAME` (the emulator's
arguments). The emulator does not send an object's generation with its bytes
(`x-goog-generation`), so TensorStore reads generation 0 and cannot make the conditional
re-reads that Orbax's checkpoint index (OCDBT) does when it revalidates its cache ("Malformed
StorageGeneration"). Cloud Storage sends it on every download; this adds it.
"""

import sys

from gcp_storage_emulator import __main__ as emulator
from gcp_storage_emulator.handlers import objects

_download = objects.download


def _download_with_generation(request, response, storage, *args, **kwargs):
  try:
    obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
  except Exception:  # Missing: the emulator's own handler answers 404.
    obj = None
  if obj is not None:
    response["x-goog-generation"] = str(obj["generation"])
    response["x-goog-metageneration"] = str(obj.get("metageneration", "1"))
  return _download(request, response, storage, *args, **kwargs)


# objects.get calls `download` through the module's globals; the routes that name it directly
# (the /download/... URLs, which TensorStore and gcsfs do not use) keep the original.
objects.download = _download_with_generation

if __name__ == "__main__":
  emulator.main(sys.argv[1:])
