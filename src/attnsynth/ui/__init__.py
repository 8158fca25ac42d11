"""The attnsynth web app (gradio, extra ``.[ui]``): a CA²-SIS editor and an AI-T2I playground.

* :mod:`attnsynth.ui.handlers` — what each button does, as plain functions calling the library;
* :mod:`attnsynth.ui.limits` — upload caps, prompt length, queue size, checked before any compute;
* :mod:`attnsynth.ui.app` — the ``gr.Blocks`` layout, the public API endpoints and ``launch``.

Started by ``attnsynth ui`` (:mod:`attnsynth.cli.ui`). Only ``app`` imports gradio.
"""
