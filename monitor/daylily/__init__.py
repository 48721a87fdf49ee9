"""The Daylily pipeline as ``workset-monitor`` steps (``workset-daylily``, docs/pipeline.md "Daylily").

Each step is a short program the daemon runs with the workset's ``WORKSET_*`` environment; it keeps what it learns
(the head node, the pipeline directory, the run's tmux session) in the workset's run state in S3, where any host can
read it, so a takeover by another daemon re-attaches to the run instead of starting a second one. On the head node
the run lives in a tmux session named after the workset, whose existence is the lock: ``tmux new-session`` refuses a
second session of that name.
"""
