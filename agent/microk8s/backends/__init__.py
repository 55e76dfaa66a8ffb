"""The interchangeable ways to reach MicroK8s: snapd REST (strict snap) or the CLI."""
