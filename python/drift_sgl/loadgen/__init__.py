"""Drive real servers with multi-turn traces, as real clients do.

``replay`` runs a trace (``drift_sgl.sim.trace``) against a server: one
closed loop per session, every turn sending the whole conversation so far.
``clients`` speaks the OpenAI chat API (streamed) or SGLang frontend
programs; ``stream`` turns a streamed answer into token times; ``text``
makes up prompt text of a given token length; ``report`` computes the same
figures (and keys) as the simulator's ``metrics``.
"""
