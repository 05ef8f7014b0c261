"""Where results live: run folders written atomically, and the SQLite results database."""

from fedleak.store.database import ResultsDB, RunRecord, run_key
from fedleak.store.folders import check_out, default_out, dump_json, write_atomically, write_text_atomically

__all__ = ["ResultsDB", "RunRecord", "check_out", "default_out", "dump_json", "run_key", "write_atomically", "write_text_atomically"]
