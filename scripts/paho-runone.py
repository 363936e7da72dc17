#!/usr/bin/env python3
"""Run ONE test of a vendored Paho interoperability suite against host:port (used by paho-interop.mjs).

usage: paho-runone.py <suite dir> <client_test.py|client_test5.py> <host> <port> <test_name>

Imports the suite as a module and sets the globals its __main__ block would set: client_test.py's
__main__ passes -h/-p through to unittest, which rejects them, and client_test5.py strips only -p
and sets topic_prefix (used by test_shared_subscriptions) only in __main__. Exit 0 = passed.
"""
import importlib, logging, os, sys, unittest

suite_dir, suite, host, port, test = sys.argv[1:6]
suite_dir = os.path.abspath(suite_dir)
os.chdir(suite_dir)
sys.path.insert(0, suite_dir)
sys.dont_write_bytecode = True  # leave no __pycache__ in the repo
mod = importlib.import_module(suite[:-3] if suite.endswith(".py") else suite)
mod.host, mod.port = host, int(port)
# The values of the suites' __main__ blocks (client_test5 sets topics again in setData()).
mod.topics = ("TopicA", "TopicA/B", "Topic/C", "TopicA/C", "/TopicA")
mod.wildtopics = ("TopicA/+", "+/C", "#", "/#", "/+", "+/+", "TopicA/#")
mod.nosubscribe_topics = ("test/nosubscribe",)
mod.topic_prefix = "client_test5/"
logging.getLogger().setLevel(logging.ERROR)
print("suite", suite, "test", test, "target", host, port, flush=True)
unittest.main(module=mod, argv=[suite, "Test." + test], exit=True, verbosity=2)
