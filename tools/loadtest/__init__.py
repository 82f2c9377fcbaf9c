"""Load and fault harness: the real app in its own process, a scripted upstream, printed tables."""

from tests.harness.ports import free_ports
from tools.loadtest.faults import AWS_TEST_ENV
from tools.loadtest.options import Options
from tools.loadtest.report import Report, format_report, run
from tools.loadtest.service import ServiceProcess

__all__ = ["AWS_TEST_ENV", "Options", "Report", "ServiceProcess", "format_report", "free_ports", "run"]
