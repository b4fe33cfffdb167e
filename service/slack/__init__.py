"""The Slack bot: one more door onto the ask pipeline (bot.py: the Bolt app and its listeners; routes.py: POST
/slack/events; answer.py: the threaded answer; identity.py: who a Slack user is to kb; mrkdwn.py: Slack's text;
files.py: files shared with the bot; socket_mode.py: Socket Mode)."""
