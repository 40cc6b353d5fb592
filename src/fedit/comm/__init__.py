"""Communication: what a round's messages weigh (bytes as Flower serializes them) and update
compression (client-side codecs, decoded by the server before aggregation)."""

from fedit.comm.payload import job_layout, job_payload_bytes, update_layout, update_payload_bytes

__all__ = ["job_layout", "job_payload_bytes", "update_layout", "update_payload_bytes"]
