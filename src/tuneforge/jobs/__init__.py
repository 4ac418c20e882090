"""The fine-tuning jobs service's persistence: files, jobs, events and checkpoints in one database.

`db` opens the database and applies the `schema` migrations; `store` reads and writes the `records`; `lifecycle`
moves a job through its statuses (claim, heartbeat, recovery). The API routes and the worker build on these.
"""
