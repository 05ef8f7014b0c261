"""Where results live: run folders written atomically, and the SQLite results database."""

from fedleak.store.database import Claim, Failure, Owner, ResultsDB, RunRecord, run_key
from fedleak.store.folders import (
    check_file_out,
    check_out,
    check_writable_parent,
    default_out,
    dump_json,
    locked,
    write_atomically,
    write_text_atomically,
)

__all__ = ["Claim", "Failure", "Owner", "ResultsDB", "RunRecord", "check_file_out", "check_out", "check_writable_parent",
           "default_out", "dump_json", "locked", "run_key", "write_atomically", "write_text_atomically"]
