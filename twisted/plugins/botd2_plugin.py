"""The twistd plugin: C{twistd botd2}. Everything lives in L{botd2.tap}."""

from twisted.application.service import ServiceMaker

botd2 = ServiceMaker(
    "BOTD #2 node", "botd2.tap", "Run a BOTD #2 peer-to-peer node.", "botd2"
)
