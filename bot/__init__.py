"""The Telegram bot: thin python-telegram-bot 22 handlers over `loop.twin.Twin`.

`bot.app` wires and runs it (`build_application`, `run_bot`, `make_notifier`); `handlers` and
`commands` hold the handlers; `keyboards` and `texts` are pure helpers; `queue` keeps slow
drafting off the update loop; `drafts` writes and shows drafts and redoes what a crash left
undone; `polling` confirms updates to Telegram only once handled; `services` is everything the
bot asks of the rest of the twin.
"""
