"""vm-isolation-scheduler: long-lived VM instances placed on VM-capable Mesos agents.

Layout: :mod:`.model` (declared groups, validation), :mod:`.placement` (pure placement and
spread), :mod:`.instances` (an instance's phases), :mod:`.core` (the decisions, on a
:class:`~.core.Driver` port and a clock), :mod:`.store` (durable state: SQLite),
:mod:`.taskinfo` (the TaskInfo), :mod:`.hooks` (lifecycle callbacks), :mod:`.mesos_driver`
(the pymesos adapter), :mod:`.service` (the event loop that ties them together),
:mod:`.api` (the HTTP API).
"""
