"""whisperfarm's Fly.io layer: the Machines API client (``client``), the price table
(``pricing``), the fleet and its policy. Nothing is imported here: a local run loads none
of it but the little its ledger and plan read (``store``, ``policy``, ``pricing``), and
not httpx."""
