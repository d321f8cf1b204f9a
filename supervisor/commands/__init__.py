"""One module per `warden` subcommand group."""
