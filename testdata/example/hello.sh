#!/bin/sh
echo "hello from a kiln build"
