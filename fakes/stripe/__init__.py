"""A fake Stripe for tests, benches and the demo: Checkout Sessions and disputes in front of localstripe."""
