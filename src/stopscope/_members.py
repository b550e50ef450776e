"""Thread and process members of a TaskScope (being written by the service work)."""


class _ServiceMembers:
    __slots__ = ()
